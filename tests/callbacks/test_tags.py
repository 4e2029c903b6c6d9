"""The public tag names: a segment per part, ``None`` parts left out, names that would split a tag refused."""

from __future__ import annotations

import importlib

import pytest

from lightning_landscape.callbacks import tags


def test_tags_of_unnamed_named_and_block_monitors() -> None:
    assert tags.hessian_eig_tag(3) == "hessian/eig_3"
    assert tags.hessian_eig_tag(1, name="val", block="net.0") == "hessian/val/net.0/eig_1"
    assert tags.hessian_tag(tags.EIG_MIN, block="net.0") == "hessian/net.0/eig_min"
    assert tags.hessian_tag(tags.TRACE) == tags.HESSIAN_TRACE == "hessian/trace"
    assert tags.grad_norm_tag("net.0", name="max", optimizer=1) == "grad_norm/max/optimizer_1/net.0"
    assert tags.grad_norm_total_tag() == tags.GRAD_NORM_TOTAL == "grad_norm/total"
    assert tags.risk_tag(tags.EXCESS_RISK, name="b") == "risk/b/excess_risk"
    assert tags.risk_tag(tags.GENERALIZATION_GAP) == tags.RISK_GENERALIZATION_GAP
    assert tags.optimizer_part(None) is None and tags.optimizer_part(0) == "optimizer_0"
    assert tags.prefix(tags.HESSIAN_SECTION, None, "net.0") == "hessian/net.0"


def test_every_constant_is_a_section_tag() -> None:
    constants = {k: v for k, v in vars(tags).items() if k.isupper() and isinstance(v, str)}
    sections = {v for k, v in constants.items() if k.endswith("_SECTION")}
    assert {"grad_norm", "hessian", "risk", "landscape"} <= sections
    for name, value in constants.items():
        if "/" in value:
            # A family's whole tag set lives in its section, and its constants are named after it.
            section = value.split("/")[0]
            assert section in sections and name.startswith(section.upper() + "_"), name


@pytest.mark.parametrize("bad", ["a/b", "", "net 0", 3])
def test_check_name_refuses_what_would_split_a_tag(bad: object) -> None:
    with pytest.raises(ValueError, match=r"`blocks` must be None or a non-empty str of letters"):
        tags.check_name(bad, "blocks")  # type: ignore[arg-type]


def test_eigenvalue_index_is_one_based() -> None:
    with pytest.raises(ValueError, match="eigenvalue index must be >= 1, got 0"):
        tags.hessian_eig_tag(0)


def test_the_old_private_tag_module_is_gone() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("lightning_landscape.callbacks._tags")
