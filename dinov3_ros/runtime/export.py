"""``dinov3-ros export``: backbone + selected heads -> one ONNX graph (or a TensorRT engine).

TorchScript exporter (``dynamo=False``), opset 17/18 (real ``LayerNormalization``), input ``image``
``[B, 3, H, W]`` (normalised float), outputs ``patch_tokens [B, h, w, C]``, ``cls [B, C]`` and
optionally ``depth [B, 1, H, W]``. Fixed-size exports bake the RoPE sin/cos tables as constants (no
Range/Tile/If); ``--resolution dynamic`` computes them in-graph (dynamic batch and H/W). The static
TensorRT checker runs on the result and the export fails on errors unless ``--force``.

``--target cpu`` writes the ONNX Runtime CPU form instead (fused ``com.microsoft.MultiHeadAttention``;
not for TensorRT), and ``--quantize int8`` its INT8 form (dynamically quantized MatMul weights, see
:func:`~dinov3_ros.runtime.ort_backend.quantize_int8`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dinov3_ros.cliargs import check_output_path, positive_int

from .graph import OUTPUT_LAYOUT, DeployModel
from .onnx_check import Finding, check_tensorrt_compat, format_findings
from .weights import load_backbone, load_depth_head

__all__ = ["ExportError", "add_arguments", "export_onnx", "load_model", "main", "parse_resolution"]

#: trace size for dynamic exports (non-square so H and W are not conflated by the tracer)
_DYNAMIC_TRACE = (224, 288)


class ExportError(RuntimeError):
    """The export failed the TensorRT compatibility check (``findings`` attached)."""

    def __init__(self, message: str, findings: list[Finding]) -> None:
        super().__init__(message)
        self.findings = findings


def load_model(arch: str | None, weights: str | Path | None) -> nn.Module:
    """A backbone: ``weights`` (file, registry name or ``random:<arch>``) or a random-init ``arch``."""
    return load_backbone(arch, weights)


def parse_resolution(spec: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"480x640"`` -> (480, 640); ``"dynamic"``/None -> None."""
    if spec is None or (isinstance(spec, str) and spec.lower() == "dynamic"):
        return None
    if isinstance(spec, tuple):
        return int(spec[0]), int(spec[1])
    parts = spec.lower().replace(",", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"resolution {spec!r}: expected HxW (e.g. 480x640) or 'dynamic'")
    if int(parts[0]) < 1 or int(parts[1]) < 1:
        raise ValueError(f"resolution {spec!r}: height and width must be positive")
    return int(parts[0]), int(parts[1])


def _save_atomic(model, out: Path) -> None:
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a model file is normally readable
    try:
        big = model.ByteSize() > 1_900_000_000
        if big:  # protobuf 2 GB limit: weights beside the graph
            onnx.save_model(model, tmp, save_as_external_data=True, location=out.name + ".data")
        else:
            onnx.save_model(model, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_onnx(
    model: nn.Module,
    out: str | Path,
    *,
    resolution: tuple[int, int] | str | None = (480, 640),
    depth_head: nn.Module | None = None,
    opset: int = 17,
    precision: str = "fp32",
    batch: int = 1,
    dynamic_batch: bool = True,
    check: bool = True,
    force: bool = False,
    extra_metadata: dict[str, Any] | None = None,
    target: str = "tensorrt",
    quantize: str | None = None,
) -> tuple[Path, list[Finding]]:
    """Export ``model`` (a backbone or :class:`DeployModel`) to ``out``; returns ``(path, findings)``.

    ``target="tensorrt"`` (default) is the portable, TensorRT-checked graph; ``"cpu"`` the ONNX Runtime
    CPU form (fused attention); ``quantize="int8"`` (implies ``"cpu"``) quantizes its MatMul weights.
    Raises :class:`ExportError` (and writes nothing) when the checker finds errors and ``force`` is False.
    """
    target, quantize = _check_export_options(opset, precision, target, quantize)
    size = parse_resolution(resolution) if not isinstance(resolution, tuple) else resolution
    dm = _deploy_model(model, depth_head, size, precision)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    proto = _trace(dm, size, batch, precision, opset, dynamic_batch, out.parent)
    meta = _metadata(dm, size, precision, opset, dynamic_batch, depth_head is not None)
    _set_metadata(proto, {**meta, **(extra_metadata or {})})
    findings = check_tensorrt_compat(proto) if check and target == "tensorrt" else []
    errors = [f for f in findings if f.severity == "error"]
    if errors and not force:
        raise ExportError(
            f"{len(errors)} TensorRT compatibility error(s); nothing written (use --force to keep it)\n"
            + format_findings(findings),
            findings,
        )
    if target == "cpu":
        from .ort_backend import cpu_variant, quantize_int8

        proto, _ = cpu_variant(proto)
        if quantize == "int8":
            proto = quantize_int8(proto)
    _save_atomic(proto, out)
    dm.set_dynamic(False)
    return out, findings


def _check_export_options(
    opset: int, precision: str, target: str, quantize: str | None
) -> tuple[str, str | None]:
    """Validated ``(target, quantize)``: int8 quantization implies the CPU target."""
    if opset < 17:
        raise ValueError(f"opset {opset} < 17 would decompose LayerNorm; use 17 or 18")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"ONNX export precision must be fp32 or fp16, got {precision!r}")
    if quantize not in (None, "none", "int8"):
        raise ValueError(f"quantize must be 'int8' or None, got {quantize!r}")
    quantize = None if quantize == "none" else quantize
    if target not in ("tensorrt", "cpu"):
        raise ValueError(f"target must be 'tensorrt' or 'cpu', got {target!r}")
    if quantize and precision != "fp32":
        raise ValueError("int8 quantization starts from fp32: drop --precision fp16")
    return ("cpu" if quantize else target), quantize


def _deploy_model(
    model: nn.Module, depth_head: nn.Module | None, size: tuple[int, int] | None, precision: str
) -> DeployModel:
    """The module to trace: eval mode, RoPE fixed for ``size`` (in-graph when None), fp16 with fp32
    RoPE periods and LayerNorms when asked."""
    dm = model if isinstance(model, DeployModel) else DeployModel(model.eval(), depth_head)
    dm = dm.eval().float()
    p = dm.patch_size
    if size is not None and (size[0] % p or size[1] % p):
        raise ValueError(f"resolution {size[0]}x{size[1]} is not a multiple of the patch size {p}")
    dm.set_dynamic(size is None)
    if precision == "fp16":
        dm = dm.half()
        if dm.vit is not None:
            dm.vit.periods.data = dm.vit.periods.data.float()
            dm.vit.set_ln_fp32(True)
    return dm


def _dynamic_axes(
    names: list[str], size: tuple[int, int] | None, dynamic_batch: bool
) -> dict[str, dict[int, str]]:
    """``dynamic_axes`` of the export: the batch (when dynamic), H/W and the grid (dynamic size)."""
    axes: dict[str, dict[int, str]] = {}
    if dynamic_batch or size is None:
        axes["image"] = {0: "batch"}
        for n in names:
            axes[n] = {0: "batch"}
    if size is None:
        axes["image"].update({2: "height", 3: "width"})
        axes["patch_tokens"].update({1: "grid_h", 2: "grid_w"})
        if "depth" in names:
            axes["depth"].update({2: "height", 3: "width"})
    return axes


def _trace(
    dm: DeployModel,
    size: tuple[int, int] | None,
    batch: int,
    precision: str,
    opset: int,
    dynamic_batch: bool,
    workdir: Path,
):
    """Trace ``dm`` with the TorchScript exporter; returns the ONNX ``ModelProto``."""
    import onnx

    h, w = size or _DYNAMIC_TRACE
    dtype = torch.float16 if precision == "fp16" else torch.float32
    dummy = torch.randn(batch, 3, h, w, dtype=dtype)
    names = dm.output_names
    axes = _dynamic_axes(names, size, dynamic_batch)
    with tempfile.TemporaryDirectory(dir=workdir) as td:
        raw = Path(td) / "raw.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # TracerWarnings: fixed-size RoPE tables are meant to be constants
            warnings.simplefilter("ignore")
            torch.onnx.export(
                dm,
                (dummy,),
                str(raw),
                dynamo=False,
                opset_version=opset,
                do_constant_folding=True,
                input_names=["image"],
                output_names=names,
                dynamic_axes=axes or None,
            )
        return onnx.load(str(raw))


def _metadata(
    dm: DeployModel,
    size: tuple[int, int] | None,
    precision: str,
    opset: int,
    dynamic_batch: bool,
    depth_head_given: bool,
) -> dict[str, Any]:
    """The ``metadata_props`` every consumer reads (engines, plans built by trtexec, the checker)."""
    names = dm.output_names
    return {
        "producer": "dinov3_ros",
        "arch": dm.arch,
        "patch_size": dm.patch_size,
        "embed_dim": dm.embed_dim,
        "num_heads": dm.vit.cfg.num_heads if dm.vit is not None else 0,
        "n_storage_tokens": dm.vit.cfg.n_storage_tokens if dm.vit is not None else 0,
        "norm_mean": list(dm.norm_mean),
        "norm_std": list(dm.norm_std),
        "heads": ["depth"] if depth_head_given or dm.depth_head is not None else [],
        "outputs": names,
        "output_layout": {n: OUTPUT_LAYOUT[n] for n in names},
        "input_name": "image",
        "input_layout": "B,3,H,W float (RGB, normalised with norm_mean/norm_std)",
        "input_size": list(size) if size is not None else "dynamic",
        "precision": precision,
        "opset": opset,
        "rope": "in-graph" if size is None else "constant",
        "dynamic_batch": bool(dynamic_batch or size is None),
        "layer_indices": list(dm.layer_indices),
    }


def _set_metadata(proto, meta: dict[str, Any]) -> None:
    """Replace ``proto``'s ``metadata_props`` with ``meta`` (JSON-encoded unless str)."""
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key = k
        entry.value = v if isinstance(v, str) else json.dumps(v)
    proto.producer_name = "dinov3_ros"


def _parse_heads(spec: str | None, depth_head_path: str | None) -> tuple[list[str], str | None]:
    heads: list[str] = []
    path = depth_head_path
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, val = item.partition("=")
        name = name.strip().lower()
        if name in ("features", "patch_tokens", "cls"):
            continue  # always exported
        if name != "depth":
            raise ValueError(
                f"unknown head {name!r}: exportable heads are depth (features and cls are always in)"
            )
        heads.append("depth")
        path = val.strip() or path
    if "depth" in heads and not path:
        raise ValueError(
            "--heads depth needs the trained head: --heads depth=HEAD.pt or --depth-head HEAD.pt"
        )
    return heads, path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI arguments of ``dinov3-ros export``."""
    parser.add_argument(
        "--format",
        choices=("onnx", "tensorrt"),
        default="onnx",
        help="onnx (any machine) or a TensorRT plan (built on the target GPU)",
    )
    parser.add_argument("--arch", help="backbone arch (random weights unless --weights)")
    parser.add_argument("--weights", help="backbone checkpoint")
    parser.add_argument(
        "--heads", default="", help="comma list: depth[=HEAD.pt] (features and cls always included)"
    )
    parser.add_argument("--depth-head", help="trained depth head file (dinov3_ros.heads.depth.save_head)")
    parser.add_argument("--resolution", default="480x640", help="HxW (multiples of 16) or 'dynamic'")
    parser.add_argument("--opset", type=int, default=17, choices=(17, 18), help="ONNX opset (default 17)")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "fp16", "int8"),
        help="ONNX dtype (fp16 for strongly-typed TensorRT 11); for tensorrt: engine precision",
    )
    parser.add_argument(
        "--target",
        default="tensorrt",
        choices=("tensorrt", "cpu"),
        help="tensorrt: portable graph, checked for TensorRT (default); cpu: ONNX Runtime CPU form "
        "(fused attention, com.microsoft ops)",
    )
    parser.add_argument(
        "--quantize",
        default="none",
        choices=("none", "int8"),
        help="int8: dynamically quantized MatMul weights for ONNX Runtime on CPU (implies --target cpu)",
    )
    parser.add_argument("--batch", type=positive_int, default=1, help="trace batch / TensorRT max batch")
    parser.add_argument(
        "--static-batch", action="store_true", help="fixed batch dim (default: dynamic batch)"
    )
    parser.add_argument("--calibration", help="INT8 calibration images: a folder or a rosbag2 (TensorRT 10)")
    parser.add_argument(
        "--force", action="store_true", help="write even when the TensorRT checker reports errors"
    )
    parser.add_argument("--out", required=True, help="output .onnx (or .engine/.plan for --format tensorrt)")


def main(args: argparse.Namespace) -> int:
    """Run ``dinov3-ros export``."""
    try:
        quantize = getattr(args, "quantize", "none")
        target = getattr(args, "target", "tensorrt")
        if args.precision == "int8" and args.format != "tensorrt":
            raise ValueError(
                "--precision int8 is a TensorRT engine precision: use --format tensorrt "
                "(or --quantize int8 for ONNX Runtime on CPU)"
            )
        if args.format == "tensorrt" and (quantize != "none" or target != "tensorrt"):
            raise ValueError("--quantize/--target cpu are ONNX Runtime CPU forms: use --format onnx")
        heads, head_path = _parse_heads(args.heads, args.depth_head)
        size = parse_resolution(args.resolution)
        check_output_path(args.out, is_file=True)
        model = load_model(args.arch, args.weights)
        head = None
        if "depth" in heads:
            head = load_depth_head(head_path)
        out = Path(args.out)
        onnx_prec = "fp16" if args.precision == "fp16" else "fp32"
        if args.format == "tensorrt":
            try:
                import tensorrt as trt
            except ImportError:
                from .trt_backend import INSTALL_HINT

                print(f"error: {INSTALL_HINT}", file=sys.stderr)
                return 2
            del trt
            onnx_out = out.with_suffix(".onnx")
        else:
            onnx_out = out
        path, findings = export_onnx(
            model,
            onnx_out,
            resolution=size,
            depth_head=head,
            opset=args.opset,
            precision=onnx_prec,
            batch=args.batch,
            dynamic_batch=not args.static_batch,
            force=args.force,
            target=target,
            quantize=quantize,
        )
        if target == "tensorrt" and quantize == "none":
            print(format_findings(findings))
        else:
            print("ONNX Runtime CPU form (com.microsoft ops): the TensorRT check does not apply")
        print(f"wrote {path}")
        if args.format == "tensorrt":
            from .trt_backend import build_engine, import_tensorrt, plan_sidecar, save_plan

            hw = None if size is not None else ((224, 224), (480, 640), (1024, 1024))
            plan = build_engine(
                path,
                precision=args.precision,
                batch=(1, args.batch, args.batch),
                hw=hw,
                timing_cache=out.with_suffix(".timing.cache"),
                calibration=args.calibration,
            )
            meta = plan_sidecar(path, args.precision, import_tensorrt().__version__, torch.device("cuda"))
            save_plan(out, plan, meta)
            print(f"wrote {out} (+ {out.name}.json: the metadata the plan needs)")
        return 0
    except ExportError as e:
        print(str(e), file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
