"""Every shipped (kernel, config, dtype) variant, for the ahead-of-time compile report
(tools/triton_report.py) and the tests that must run each config in the interpreter.

A spec names the kernel, its constexprs (block sizes and feature flags) and num_warps. The specs
are every variant the launchers can produce: tiles always at the config's width, each flag
combination a launch can ask for (which inputs exist, which gradients are wanted), biases and
scales always loaded (`_conv._vec`). A lighter variant is not bounded by the heaviest one: ptxas
allocates each differently, and some spilled where the heaviest did not.
tests/triton/test_spec_coverage.py checks every launch of the interpreter tests against this list.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton.language as tl

from . import _attention as A
from . import _attention_backward as AB
from . import _attention_backward_fused as ABF
from . import _attention_fused as AF
from . import _backward as BW
from . import _conv as K
from . import _mlp_backward as MB
from . import _partials as PS
from . import _train_backward as TB

_PTR_FP32 = {"ws_ptr", "ws_g_ptr", "ws_ml_ptr", "ws_dg_ptr", "ws_dw_ptr", "gm_ptr",
             "tok_ptr", "ws_w_ptr", "mean_ptr", "scale_ptr",
             "shift_ptr", "coef_ptr", "ws_gk_ptr", "bnw_ptr", "bnb_ptr", "stat_ptr",
             "dgw_ptr", "dgb_ptr", "ws_dqk_ptr"}
_FLOAT_ARGS = {"scale", "eps"}
_DT = {"fp32": tl.float32, "fp16": tl.float16, "bf16": tl.bfloat16}


@dataclass
class Spec:
    kernel: object  # the @triton.jit function
    config: str
    dtype: str  # "fp32" | "fp16" | "bf16": element type of the activation pointers
    constexprs: dict
    num_warps: int
    # "cl" / "nchw": which stride args the JIT sees as 1 (specialized); "gcl": the gradient g
    # channels_last beside NCHW x / out / res (_conv._grad_beside)
    layout: str | None = None
    num_stages: int = 3
    fp32_ptrs: tuple = ()  # activation pointers that are fp32 whatever `dtype` (backward buffers)

    def constants(self) -> dict:
        c = dict(self.constexprs)
        ones = {"cl": ("sxc", "soc", "src", "sgc"), "nchw": ("sxw", "sow", "srw", "sgw"),
                "gcl": ("sgc", "sxw", "sow", "srw"),
                "tok": ("sqd", "skd")}.get(self.layout, ())
        c.update({a: 1 for a in ones if a in self.kernel.arg_names})
        return c

    def attrs(self) -> dict:
        """Pointer alignment as the JIT sees it for torch allocations (16 B)."""
        return {(i,): [["tt.divisibility", 16]]
                for i, a in enumerate(self.kernel.arg_names) if a.endswith("_ptr")}

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__ if hasattr(self.kernel, "fn") else self.kernel.__name__

    def signature(self) -> dict:
        sig = {}
        consts = self.constants()
        for a in self.kernel.arg_names:
            if a in consts:
                sig[a] = "constexpr"
            elif a.endswith("_ptr"):
                fp32 = a in _PTR_FP32 or a in self.fp32_ptrs or self.dtype == "fp32"
                sig[a] = "*fp32" if fp32 else f"*{self.dtype}"
            elif a in _FLOAT_ARGS:
                sig[a] = "fp32"
            else:
                sig[a] = "i32"
        return sig


def _off(flags: dict) -> str:
    """Config-name suffix naming the flags a variant switches off ("" for the heaviest)."""
    off = [k for k, v in flags.items() if v is False]
    return "".join(f",-{k}" for k in off)


_T, _F = True, False
# Every flag combination the launchers produce (the flags of a launch are decided by which inputs
# exist and which gradients are wanted; biases and scales are always loaded, see _conv._vec):
# dwconv_bn_backward: dx and/or the weight partials; the residual only with dx
DWCONV_BWD = [dict(NEED_DX=dx, NEED_W=w, HAS_RES=r)
              for dx, w, r in ((_T, _T, _T), (_T, _T, _F), (_T, _F, _T), (_T, _F, _F),
                               (_F, _T, _F))]
# fused MLP forward: conv_block (dwconv, residual x) / mlp (residual optional), eval or train
MLP_FWD = [dict(HAS_DW=dw, HAS_AFFINE=aff, HAS_RES=res)
           for dw in (_T, _F) for aff in (_T, _F) for res in ((_T,) if dw else (_T, _F))]
# fused MLP backward, kernel P: dz and / or u (the layer scale's gradient); neither for db2 alone
MLP_BWD_DZ = [dict(NEED_DZ=dz, NEED_U=u) for dz in (_T, _F) for u in (_T, _F)]
# fused attention backward finalize: any non-empty subset of the parameter gradients
FINALIZE = [dict(HAS_FINAL=True, NEED_WP=a, NEED_BP=b, NEED_WF=c, NEED_BF=d)
            for a in (_T, _F) for b in (_T, _F) for c in (_T, _F) for d in (_T, _F)
            if a or b or c or d] + \
           [dict(HAS_FINAL=False, NEED_WP=a, NEED_BP=b, NEED_WF=False, NEED_BF=False)
            for a in (_T, _F) for b in (_T, _F) if a or b]
# core attention backward pass 2: with / without the extra qn gradient, dq and / or dk
CORE_BWD_APPLY = [dict(HAS_DQN=h, NEED_DQ=q, NEED_DK=k)
                  for h in (_T, _F) for q, k in ((_T, _T), (_T, _F), (_F, _T))]


def all_specs() -> list[Spec]:
    specs: list[Spec] = []
    for dt in ("fp32", "fp16", "bf16"):
        prec = "ieee" if dt == "fp32" else "tf32"
        for lay in ("cl", "nchw"):
            for cname, cfg in K.DW_CONFIGS.items():
                tiles = dict(BLOCK_P=cfg["BLOCK_P"], BLOCK_C=cfg["BLOCK_C"])
                w = cfg["num_warps"]
                # dwconv weights in dt, or fp32 (the train form folds BN into fp32 weights;
                # the statistics of a dwconv-less MLP use an fp32 identity tap)
                for wname, wptrs in [("", ())] + ([(",fp32 w", ("dww_ptr", "dwb_ptr"))]
                                                   if dt != "fp32" else []):
                    for kern in (K._dwconv_bn_fwd_kernel, K._dwconv_bn_stats_kernel):
                        specs.append(Spec(kern, cname + wname, dt, dict(tiles), w, lay,
                                          fp32_ptrs=wptrs))
                # kernels reading a gradient: also with it channels_last beside an NCHW x
                # ("gcl", _conv._grad_beside: the fused MLP backward's dz rows, or such an
                # autograd gradient)
                g_lays = (lay, "gcl") if lay == "nchw" else (lay,)
                for fl in DWCONV_BWD:
                    for gl in g_lays:
                        specs.append(Spec(K._dwconv_bn_bwd_kernel, cname + _off(fl), dt,
                                          dict(fl, **tiles), w, gl))
                # backward of the train forms: BN reduce / affine on a gradient in dt, with or
                # without the dwconv (conv_block_train / mlp_train; without it the unused dwconv
                # pointers are the fp32 mean). The affine kernel writes dz / dx in dt, or (no
                # g: the BN forward) z in dt where the fused MLP backward reads it, in fp32 for
                # the torch path of wider MLPs
                for has_dw in (True, False):
                    wptrs = () if has_dw else ("dww_ptr", "dwb_ptr")
                    fl = dict(HAS_DW=has_dw)
                    for gl in g_lays:
                        specs.append(Spec(TB._bn_bwd_reduce_kernel, cname + _off(fl), dt,
                                          dict(fl, **tiles), w, gl, fp32_ptrs=wptrs))
                    for has_g in (True, False):
                        fl = dict(HAS_G=has_g, HAS_DW=has_dw)
                        outs = [("", ())] + ([(",out fp32", ("out_ptr",))]
                                             if dt != "fp32" and not has_g else [])
                        for oname, optrs in outs:
                            for gl in g_lays if has_g else (lay,):
                                specs.append(Spec(TB._bn_affine_kernel,
                                                  cname + _off(fl) + oname, dt,
                                                  dict(fl, **tiles), w, gl,
                                                  fp32_ptrs=wptrs + optrs))
        # batch statistics merge: fp32 workspace / BN parameters / stat rows, mean and var
        # stored in the input dtype (no layout: [C] vectors)
        mc = K.MERGE_CONFIG
        tiles = dict(BLOCK_R=mc["BLOCK_R"], BLOCK_C=mc["BLOCK_C"])
        # without the fold its dwconv pointers are fp32 stand-ins; with it (dwconv_bn_train) the
        # dwconv weights in dt, or fp32
        folded = ("wfold_ptr", "bfold_ptr")  # fp32 outputs (or stand-ins)
        specs.append(Spec(K._bn_stats_merge_kernel, "default,-FOLD", dt,
                          dict(tiles, FOLD=False), mc["num_warps"],
                          fp32_ptrs=("dww_ptr", "dwb_ptr") + folded))
        for wname, wptrs in [("", ())] + ([(",fp32 w", ("dww_ptr", "dwb_ptr"))]
                                           if dt != "fp32" else []):
            specs.append(Spec(K._bn_stats_merge_kernel, "default" + wname, dt,
                              dict(tiles, FOLD=True), mc["num_warps"],
                              fp32_ptrs=wptrs + folded))
        if dt == "fp32":  # the BN backward's coefficients: every pointer fp32, one variant
            specs.append(Spec(TB._bn_bwd_coef_kernel, "default", dt, dict(tiles),
                              mc["num_warps"]))
        for lay in ("cl", "nchw"):
            for key, cfg in K.MLP_CONFIGS.items():
                # tiles at the config's width (the launcher always uses it)
                for fl in MLP_FWD:
                    c = dict(fl, BLOCK_P=cfg["BLOCK_P"], BLOCK_CI=key, BLOCK_CO=key,
                             BLOCK_H=cfg["BLOCK_H"], DOT_DT=_DT[dt], INPUT_PREC=prec)
                    specs.append(Spec(K._fused_mlp_fwd_kernel, f"C<={key}" + _off(fl), dt, c,
                                      cfg["num_warps"], lay, cfg["num_stages"]))
            # fused MLP backward at the config's width; z (x, or the train forms' BN output)
            # and dz in the input dtype, the partials in fp32
            for key in MB.BWD_CONFIGS:
                if dt == "fp32" and key > MB.BWD_FP32_MAX_WIDTH:
                    continue
                # the launcher's own config (fp32 overrides included)
                cfg = MB.bwd_config(key, torch.float32 if dt == "fp32" else torch.float16)
                widths = dict(BLOCK_CI=key, BLOCK_CO=key, DOT_DT=_DT[dt], INPUT_PREC=prec)
                c = cfg["dz"]
                for fl in MLP_BWD_DZ:
                    specs.append(Spec(
                        MB._mlp_bwd_dz_kernel, f"C<={key}" + _off(fl), dt,
                        dict(fl, BLOCK_P=c["BLOCK_P"], BLOCK_H=c["BLOCK_H"],
                             RELOAD_G=c.get("RELOAD_G", False), **widths),
                        c["num_warps"], lay, c["num_stages"]))
                c = cfg["dw"]
                specs.append(Spec(
                    MB._mlp_bwd_dw_kernel, f"C<={key}", dt,
                    dict(BLOCK_P=c["BLOCK_P"], BLOCK_H=c["BLOCK_H"],
                         ONE_LOAD=c.get("ONE_LOAD", False), **widths),
                    c.get("nchw_warps", c["num_warps"]) if lay == "nchw" else c["num_warps"],
                    lay, c["num_stages"], fp32_ptrs=("ws1_ptr", "ws2_ptr", "wsb_ptr")))
            # wide-channel split (width-independent tiles)
            ca, cb = K.SPLIT_CONFIG["hidden"], K.SPLIT_CONFIG["out"]
            for has_dw in (True, False):
                for aff in (True, False):
                    fl = dict(HAS_DW=has_dw, HAS_AFFINE=aff)
                    c = dict(fl, BLOCK_P=ca["BLOCK_P"], BLOCK_N=ca["BLOCK_N"],
                             BLOCK_K=ca["BLOCK_K"], DOT_DT=_DT[dt], INPUT_PREC=prec)
                    specs.append(Spec(K._mlp_hidden_kernel, "split" + _off(fl), dt, c,
                                      ca["num_warps"], lay, ca["num_stages"]))
            for res in (True, False):
                fl = dict(HAS_RES=res)
                c = dict(fl, BLOCK_P=cb["BLOCK_P"], BLOCK_N=cb["BLOCK_N"], BLOCK_K=cb["BLOCK_K"],
                         DOT_DT=_DT[dt], INPUT_PREC=prec)
                specs.append(Spec(K._mlp_out_kernel, "split" + _off(fl), dt, c,
                                  cb["num_warps"], lay, cb["num_stages"]))
        for key, cfg in A.ATTN_CONFIGS.items():
            for pool, pid in A.POOL_IDS.items():
                specs.append(Spec(A._attn_pool_partial_kernel, f"D<={key},{pool}", dt,
                                  dict(POOL=pid, BLOCK_N=cfg["BLOCK_N"], BLOCK_D=key),
                                  cfg["num_warps"], "tok"))
                specs.append(Spec(A._attn_apply_kernel, f"D<={key},{pool}", dt,
                                  dict(POOL=pid, BLOCK_N=cfg["BLOCK_N"], BLOCK_D=key,
                                       BLOCK_S=A.MAX_SPLITS), cfg["num_warps"], "tok"))
        # fused module forward, compiled at the config's width (the launcher always uses it);
        # kernel B with and without the final linear (stores per chunk)
        # (fp32: the launcher's own config, AF.fused_config, incl. the FP32_CONFIGS overrides)
        for key in AF.FUSED_CONFIGS:
            if dt == "fp32" and key > AF.FP32_MAX_WIDTH:
                continue
            cfg = AF.fused_config(key, torch.float32 if dt == "fp32" else torch.float16)
            ca, cb = cfg["pool"], cfg["apply"]
            for pool, pid in A.POOL_IDS.items():
                specs.append(Spec(AF._attn_fused_pool_kernel, f"D<={key},{pool}", dt,
                                  dict(POOL=pid, BLOCK_N=ca["BLOCK_N"], BLOCK_D=key,
                                       BLOCK_K=ca["BLOCK_K"], DOT_DT=_DT[dt], INPUT_PREC=prec),
                                  ca["num_warps"], num_stages=ca["num_stages"]))
                for final in (True, False):
                    specs.append(Spec(
                        AF._attn_fused_apply_kernel,
                        f"D,T<={key},{pool}" + ("" if final else ",no final"), dt,
                        dict(HAS_FINAL=final, POOL=pid,
                             BLOCK_N=cb["BLOCK_N"], BLOCK_D=key, BLOCK_T=key,
                             BLOCK_K=cb["BLOCK_K"], BLOCK_J=cb["BLOCK_J"], BLOCK_S=A.MAX_SPLITS,
                             GK_SCRATCH=cb.get("GK_SCRATCH", False), DOT_DT=_DT[dt],
                             INPUT_PREC=prec),
                        cb["num_warps"], num_stages=cb["num_stages"]))
        # fused module backward at the config's width; kernels T and W also without the final
        # linear (dout1 is then dy itself: different loads), kernel T also without dx
        for key in ABF.BWD_FUSED_CONFIGS:
            if dt == "fp32" and key > ABF.FP32_MAX_WIDTH:
                continue
            tdt = torch.float32 if dt == "fp32" else torch.float16
            cfg = ABF.bwd_fused_config(key, tdt)  # the launcher's own (fp32 overrides included)
            cp, cw = cfg["pool"], cfg["weight"]
            dots = dict(DOT_DT=_DT[dt], INPUT_PREC=prec)
            for pool, pid in A.POOL_IDS.items():
                specs.append(Spec(ABF._attn_bwd_fused_pool_kernel, f"D,T<={key},{pool}", dt,
                                  dict(POOL=pid, BLOCK_N=cp["BLOCK_N"], BLOCK_D=key,
                                       BLOCK_K=cp["BLOCK_K"], **dots),
                                  cp["num_warps"], num_stages=cp["num_stages"]))
                for final in (True, False):
                    for need_dx in (True, False):
                        ct = ABF.token_config(key, need_dx, tdt)
                        specs.append(Spec(
                            ABF._attn_bwd_fused_token_kernel,
                            f"D,T<={key},{pool}" + ("" if final else ",no final")
                            + _off(dict(NEED_DX=need_dx)), dt,
                            dict(HAS_FINAL=final, NEED_DX=need_dx, POOL=pid,
                                 BLOCK_N=ct["BLOCK_N"], BLOCK_D=key, BLOCK_K=ct["BLOCK_K"],
                                 BLOCK_J=ct["BLOCK_J"], BLOCK_S=A.MAX_SPLITS,
                                 DQK_SCRATCH=need_dx and ct.get("DQK_SCRATCH", False),
                                 **dots),
                            ct["num_warps"], num_stages=ct["num_stages"]))
            for final in (True, False):
                specs.append(Spec(ABF._attn_bwd_fused_weight_kernel,
                                  f"D,T<={key}" + ("" if final else ",no final"), dt,
                                  dict(HAS_FINAL=final, BLOCK_N=cw["BLOCK_N"], BLOCK_D=key,
                                       BLOCK_T=key, BLOCK_I=cw["BLOCK_I"],
                                       BLOCK_K=cw["BLOCK_K"], **dots),
                                  cw["num_warps"], num_stages=cw["num_stages"]))
        # the fused backward's tail: fp32 E / F / sum dy in, the wanted gradients in dt
        for fl in FINALIZE:
            specs.append(Spec(ABF._attn_bwd_finalize_kernel,
                              ("final" if fl["HAS_FINAL"] else "no final") + _off(fl), dt,
                              dict(fl, BLOCK=ABF.FINALIZE_BLOCK), ABF.FINALIZE_WARPS,
                              fp32_ptrs=("e_ptr", "f_ptr", "dbf_ptr")))
        for key, cfg in AB.ATTN_BWD_CONFIGS.items():
            for pool, pid in A.POOL_IDS.items():
                for need_dg in (True, False):
                    fl = dict(NEED_DG=need_dg)
                    specs.append(Spec(AB._attn_bwd_partial_kernel, f"D<={key},{pool}" + _off(fl),
                                      dt, dict(fl, POOL=pid, BLOCK_N=cfg["P1_BLOCK_N"],
                                               BLOCK_D=key), cfg["p1_warps"], "tok"))
                for fl in CORE_BWD_APPLY:
                    specs.append(Spec(AB._attn_bwd_apply_kernel, f"D<={key},{pool}" + _off(fl),
                                      dt, dict(fl, POOL=pid, BLOCK_N=cfg["BLOCK_N"], BLOCK_D=key,
                                               BLOCK_S=A.MAX_SPLITS), cfg["num_warps"], "tok"))
        # the fused backwards' partial sums: fp32 partials in, gradients in the weight dtype
        specs.append(Spec(PS._sum_partials_kernel, "default", dt, dict(BLOCK=PS.BLOCK), 4,
                          fp32_ptrs=tuple(f"src{i}_ptr" for i in range(PS.MAX_PAIRS))))
    specs.append(Spec(BW._gelu_fwd_bwd_kernel, "default", "fp32", dict(BLOCK=BW.GELU_BLOCK), 4))
    return specs
