import sys
from pathlib import Path

# `cases.py` sits next to the tests (no package __init__ in tests/).
sys.path.insert(0, str(Path(__file__).parent))
