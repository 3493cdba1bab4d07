"""The interpreter tests and the AOT report (tools/triton_report.py, _specs) cover the same kernel
variants. Runs after the rest of tests/triton (conftest orders it last):
- every launch the interpreter tests made is a variant the AOT report compiles (same kernel,
  constexprs: tiles and feature flags, warps, stages), so no launched variant goes unchecked for
  spills;
- when the whole folder ran: every tile config and every flag combination of each kernel ran in
  the interpreter at least once, each in some test against its reference (the interpreter
  ignores warps and stages)."""

from __future__ import annotations

import pytest
from _launches import FULL_RUN, LAUNCHES, PTR_DTYPES, launch_key, split_key

pytestmark = pytest.mark.triton


def _spec_keys() -> set:
    from swiftkern.triton_kernels._specs import all_specs

    return {launch_key(s.name, s.constexprs, s.num_warps, s.num_stages) for s in all_specs()}


def test_every_launch_is_an_aot_compiled_variant():
    if not LAUNCHES:
        pytest.skip("no kernel was launched in this session (run with the rest of tests/triton)")
    missing = sorted(LAUNCHES - _spec_keys(), key=repr)
    assert not missing, f"{len(missing)} launched variants are not AOT-compiled:\n" + \
        "\n".join(map(repr, missing[:20]))


def test_every_config_and_flag_combination_ran_in_the_interpreter():
    if not FULL_RUN[0]:
        pytest.skip("needs the whole of tests/triton in this session")
    flags_run, configs_run = (set(x) for x in zip(*map(split_key, LAUNCHES)))
    flags_all, configs_all = (set(x) for x in zip(*map(split_key, _spec_keys())))
    missing = sorted(flags_all - flags_run, key=repr) + sorted(configs_all - configs_run, key=repr)
    assert not missing, f"{len(missing)} variants never ran in the interpreter:\n" + \
        "\n".join(map(repr, missing[:30]))


def test_pointers_typed_fp32_by_name_are_launched_fp32():
    # _specs._PTR_FP32 types a pointer argument fp32 by its name in every kernel: a kernel whose
    # argument of that name takes an fp16 / bf16 tensor would be AOT-compiled as a variant no
    # launch runs (session 15: "wf_ptr", meant for a new fp32 output, also named the attention
    # kernels' w_final and turned their bf16 specs into fp32-weight ones)
    if not PTR_DTYPES:
        pytest.skip("no kernel was launched in this session (run with the rest of tests/triton)")
    from swiftkern.triton_kernels._specs import _PTR_FP32

    wrong = sorted(k for k in PTR_DTYPES if k[1] in _PTR_FP32 and k[2] != "torch.float32")
    assert not wrong, f"{len(wrong)} fp32-named pointers launched with other dtypes:\n" + \
        "\n".join(map(repr, wrong[:20]))
