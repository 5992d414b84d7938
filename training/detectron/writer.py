"""Writes Detectron-format Mask^X weights files, as the authors' released files are: the test
suite's files and the full-size benchmark's (``maskx bench detectron``) come from here.

Written from the authors' code (``ronghanghu/seg_every_thing``), independently of the importer
(nothing here reads :mod:`training.detectron.manifest`): the parameter names follow ``lib/modeling/ResNet.py`` (``add_ResNet_convX_body``,
``add_residual_block``, ``bottleneck_transformation``, ``basic_bn_shortcut``,
``basic_bn_stem``), ``FPN.py`` (``add_fpn``, ``add_topdown_lateral_module``,
``add_fpn_rpn_outputs``), ``fast_rcnn_heads.py`` (``add_roi_2mlp_head``,
``add_fast_rcnn_outputs``) and ``mask_rcnn_heads.py`` (``mask_rcnn_fcn_head_v1upXconvs``,
``bbox2mask_weight_transfer``, ``cls_agnostic_mlp_branch``); the file's extra blobs follow
``lib/utils/net.py`` (momentum of the trainable parameters, preserved unused blobs) and
``tools/vg3k_training/`` (the ``_jcvbackup`` copies).

The pickle is emitted opcode by opcode as Python 2's ``cPickle`` writes it at protocol 0 or
2: byte strings are Python 2 ``str`` (``STRING``/``BINSTRING``), arrays go through
``numpy.core.multiarray._reconstruct`` and ``numpy.dtype``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

# -- the model's parameters, as Detectron names them -----------------------------------------


@dataclass(frozen=True)
class Spec:
    """A Detectron Mask^X R-CNN (FPN, 2-MLP box head, 4-conv mask head, weight transfer)."""

    blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    num_classes: int = 3001  # K, background excluded (Detectron's NUM_CLASSES is K + 1)
    fpn_dim: int = 256
    box_dim: int = 1024
    mask_dim: int = 256
    mask_convs: int = 4
    transfer_layers: int = 2
    mlp: bool = True
    num_anchors: int = 3
    resolution: int = 28

    @property
    def conv_body(self) -> str:
        return "FPN.add_fpn_ResNet101_conv5_body" if self.blocks[2] == 23 else (
            "FPN.add_fpn_ResNet50_conv5_body"
        )  # fmt: skip


def _conv(name: str, cout: int, cin: int, k: int, bias: bool = True) -> Iterator[tuple]:
    yield f"{name}_w", (cout, cin, k, k)
    if bias:
        yield f"{name}_b", (cout,)


def _affine(name: str, dim: int) -> Iterator[tuple]:
    yield f"{name}_s", (dim,)
    yield f"{name}_b", (dim,)


def resnet_params(spec: Spec) -> Iterator[tuple[str, tuple[int, ...]]]:
    """``add_ResNet_convX_body``: stem, then stages res2..res5 of ``blocks`` residual blocks."""
    w = spec.width
    yield from _conv("conv1", w, 3, 7, bias=False)  # basic_bn_stem: no_bias=1
    yield from _affine("res_conv1_bn", w)
    dim_in = w
    for stage, n in zip((2, 3, 4, 5), spec.blocks, strict=True):
        inner = w * 2 ** (stage - 2)
        out = 4 * inner
        for i in range(n):
            prefix = f"res{stage}_{i}"
            for branch, cin, cout, k in (
                ("branch2a", dim_in, inner, 1),
                ("branch2b", inner, inner, 3),
                ("branch2c", inner, out, 1),
            ):
                yield from _conv(f"{prefix}_{branch}", cout, cin, k, bias=False)  # ConvAffine
                yield from _affine(f"{prefix}_{branch}_bn", cout)
            if dim_in != out:  # basic_bn_shortcut
                yield from _conv(f"{prefix}_branch1", out, dim_in, 1, bias=False)
                yield from _affine(f"{prefix}_branch1_bn", out)
            dim_in = out


def fpn_params(spec: Spec) -> Iterator[tuple[str, tuple[int, ...]]]:
    """``add_fpn`` (levels from ``fpn_level_info_ResNet*_conv5``) and the FPN RPN, whose
    convs are created at level 2 and shared by levels 3..6 (``ConvShared``)."""
    sums = [f"res{s}_{n - 1}_sum" for s, n in zip((5, 4, 3, 2), spec.blocks[::-1], strict=True)]
    dims = [4 * spec.width * 2 ** (s - 2) for s in (5, 4, 3, 2)]
    yield from _conv(f"fpn_inner_{sums[0]}", spec.fpn_dim, dims[0], 1)
    for s, d in zip(sums[1:], dims[1:], strict=True):
        yield from _conv(f"fpn_inner_{s}_lateral", spec.fpn_dim, d, 1)
    for s in sums:
        yield from _conv(f"fpn_{s}", spec.fpn_dim, spec.fpn_dim, 3)
    yield from _conv("conv_rpn_fpn2", spec.fpn_dim, spec.fpn_dim, 3)
    yield from _conv("rpn_cls_logits_fpn2", spec.num_anchors, spec.fpn_dim, 1)
    yield from _conv("rpn_bbox_pred_fpn2", 4 * spec.num_anchors, spec.fpn_dim, 1)


def box_params(spec: Spec) -> Iterator[tuple[str, tuple[int, ...]]]:
    d, c = spec.box_dim, spec.num_classes + 1
    yield "fc6_w", (d, spec.fpn_dim * 7 * 7)
    yield "fc6_b", (d,)
    yield "fc7_w", (d, d)
    yield "fc7_b", (d,)
    yield "cls_score_w", (c, d)
    yield "cls_score_b", (c,)
    yield "bbox_pred_w", (4 * c, d)
    yield "bbox_pred_b", (4 * c,)


def mask_params(spec: Spec) -> Iterator[tuple[str, tuple[int, ...]]]:
    """The mask branch: the 16 blobs stage 2 trains (with momentum in the file)."""
    m, dim_in = spec.mask_dim, spec.fpn_dim
    for i in range(1, spec.mask_convs + 1):
        yield from _conv(f"_[mask]_fcn{i}", m, dim_in, 3)
        dim_in = m
    yield "conv5_mask_w", (m, m, 2, 2)  # ConvTranspose: (C_in, C_out, kH, kW)
    yield "conv5_mask_b", (m,)
    embed = 5 * spec.box_dim  # cls_score_w (D) ++ bbox_pred_w reshaped to (K + 1, 4 D)
    layers = {1: [], 2: ["bbox2mask_mlp_l1"], 3: ["bbox2mask_mlp_l1", "bbox2mask_mlp_l2"]}
    for name in layers[spec.transfer_layers]:
        yield f"{name}_w", (m, embed)  # dim_h = dim (the mask head's width)
        yield f"{name}_b", (m,)
        embed = m
    yield "mask_fcn_logits_w_flat_w", (m, embed)
    yield "mask_fcn_logits_w_flat_b", (m,)
    if spec.mlp:
        r2 = spec.resolution**2
        yield "mask_mlp_logits_raw_w", (r2, m * r2)
        yield "mask_mlp_logits_raw_b", (r2,)


def model_params(spec: Spec) -> dict[str, tuple[int, ...]]:
    """Every parameter of the model (``model.params``) → shape, in Detectron's order."""
    out: dict[str, tuple[int, ...]] = {}
    for part in (resnet_params, fpn_params, box_params, mask_params):
        for name, shape in part(spec):
            assert name not in out, name
            out[name] = shape
    return out


def extra_blobs(spec: Spec) -> dict[str, tuple[int, ...]]:
    """What else the released file holds: momentum of stage 2's 16 trainable blobs, the four
    ``_jcvbackup`` copies, and ImageNet leftovers (``fc1000_*``, conv biases)."""
    out = {f"{n}_momentum": s for n, s in mask_params(spec)}
    for n, s in box_params(spec):
        if n.startswith(("cls_score", "bbox_pred")):
            out[f"{n}_jcvbackup"] = s
    out["fc1000_w"] = (1000, 32 * spec.width)
    out["fc1000_b"] = (1000,)
    for n, s in resnet_params(spec):
        if n.endswith("_w"):  # conv1_w and every branch conv: a zero bias from ImageNet
            out[n[:-2] + "_b"] = (s[0],)
    return out


def make_blobs(
    spec: Spec, seed: int = 0, *, extras: bool = True, scale: float = 0.05
) -> dict[str, np.ndarray]:
    """Random float32 blobs for ``spec`` (leftover conv biases zero, backups equal to their
    blob), with :func:`extra_blobs` when ``extras``."""
    rng = np.random.default_rng(seed)
    blobs = {
        n: (rng.standard_normal(s, dtype=np.float32) * scale) for n, s in model_params(spec).items()
    }
    for n in blobs:
        if n.endswith("_bn_s"):
            blobs[n] = 1.0 + blobs[n]  # scales near one, as trained AffineChannel scales are
    if extras:
        for n, s in extra_blobs(spec).items():
            if n.endswith("_jcvbackup"):
                blobs[n] = blobs[n[: -len("_jcvbackup")]].copy()
            elif n.startswith("fc1000") or n.endswith("_momentum"):
                blobs[n] = rng.standard_normal(s, dtype=np.float32) * scale
            else:
                blobs[n] = np.zeros(s, np.float32)
    return blobs


# -- the config: YAML as Python 2's yaml.dump(cfg) writes Detectron's AttrDict ----------------


def stage2_cfg_text(spec: Spec, num_classes: int = 81) -> str:
    """A stage-2 config (``NUM_CLASSES 81``) in the tagged form PyYAML's ``yaml.dump`` gives a
    Detectron ``AttrDict``: ``!!python/object/new:`` mappings with ``dictitems`` and ``state``,
    ``!!python/unicode``/``!!python/tuple`` values and ``PIXEL_MEANS`` as a numpy
    ``_reconstruct`` call whose bytes are ``!!binary``."""
    import base64

    means = base64.b64encode(np.array([102.9801, 115.9465, 122.7717], "<f8").tobytes()).decode()
    ad = "!!python/object/new:utils.collections.AttrDict"
    return f"""{ad}
dictitems:
  FPN: {ad}
    dictitems:
      DIM: {spec.fpn_dim}
      FPN_ON: true
      RPN_ASPECT_RATIOS: !!python/tuple [0.5, 1, 2]
    state: {{__immutable__: true}}
  MODEL: {ad}
    dictitems:
      CONV_BODY: !!python/unicode '{spec.conv_body}'
      MASK_ON: true
      NUM_CLASSES: {num_classes}
      TYPE: !!python/unicode 'mask_rcnn_frozen_features'
    state: {{__immutable__: true}}
  MRCNN: {ad}
    dictitems:
      BBOX2MASK: {ad}
        dictitems:
          BBOX2MASK_ON: true
          INCLUDE_BBOX_PRED: true
          INCLUDE_CLS_SCORE: true
          STOP_DET_W_GRAD: true
          TYPE: !!python/unicode '{spec.transfer_layers}_layer'
          USE_LEAKYRELU: true
        state: {{__immutable__: true}}
      DIM_REDUCED: {spec.mask_dim}
      JOINT_FCN_MLP_HEAD: {"true" if spec.mlp else "false"}
      MLP_MASK_BRANCH_TYPE: ''
      RESOLUTION: {spec.resolution}
    state: {{__immutable__: true}}
  PIXEL_MEANS: !!python/object/apply:numpy.core.multiarray._reconstruct
    args:
    - &id001 !!python/name:numpy.ndarray ''
    - !!python/tuple [0]
    - b
    state: !!python/tuple
    - 1
    - !!python/tuple [1, 1, 3]
    - !!python/object/apply:numpy.dtype
      args: [f8, 0, 1]
      state: !!python/tuple [3, <, null, null, null, -1, -1, 0]
    - false
    - !!binary |
      {means}
  RESNETS: {ad}
    dictitems:
      NUM_GROUPS: 1
      STRIDE_1X1: true
      WIDTH_PER_GROUP: {spec.width}
    state: {{__immutable__: true}}
  TEST: {ad}
    dictitems:
      MAX_SIZE: 1333
      NMS: 0.5
      SCALE: 800
      SCORE_THRESH: 0.05
    state: {{__immutable__: true}}
state: {{__immutable__: true}}
"""


# -- the pickle: Python 2 cPickle's opcodes ------------------------------------------------------


@dataclass(frozen=True)
class Global:
    """A module-level name (GLOBAL opcode)."""

    module: str
    name: str


@dataclass(frozen=True)
class Call:
    """``func(*args)`` (REDUCE), then ``__setstate__(state)`` (BUILD) when state is given."""

    func: Global
    args: tuple
    state: Any = None


@dataclass
class Py2Pickler:
    """Emits Python 2 pickles (protocol 0 or 2) of dicts, tuples, ints, bools, None, byte
    strings (Python 2 ``str``), text (Python 2 ``unicode``), :class:`Global`, :class:`Call`
    and numpy arrays."""

    out: BinaryIO
    protocol: int = 2
    _escape: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.protocol not in (0, 2):
            raise ValueError("Python 2 pickles here are protocol 0 or 2")
        # repr() of a Python 2 str: printable ASCII as is, \\ \' \t \n \r, the rest \xNN.
        special = {ord("\\"): b"\\\\", ord("'"): b"\\'", 9: b"\\t", 10: b"\\n", 13: b"\\r"}
        self._escape = [
            special.get(b, bytes([b]) if 32 <= b < 127 else b"\\x%02x" % b) for b in range(256)
        ]

    def dump(self, obj: Any) -> None:
        if self.protocol == 2:
            self.out.write(b"\x80\x02")
        self._save(obj)
        self.out.write(b".")

    def _save(self, obj: Any) -> None:
        w, p2 = self.out.write, self.protocol == 2
        if obj is None:
            w(b"N")
        elif isinstance(obj, bool):
            w((b"\x88" if obj else b"\x89") if p2 else (b"I01\n" if obj else b"I00\n"))
        elif isinstance(obj, int):
            if not p2:
                w(b"I%d\n" % obj)
            elif 0 <= obj < 256:
                w(b"K" + bytes([obj]))
            else:
                w(b"J" + struct.pack("<i", obj))
        elif isinstance(obj, float):
            w(b"G" + struct.pack(">d", obj) if p2 else b"F%r\n" % obj)
        elif isinstance(obj, bytes):
            if p2:
                w(
                    (b"U" + bytes([len(obj)]))
                    if len(obj) < 256
                    else b"T" + struct.pack("<i", len(obj))
                )
                w(obj)
            else:
                w(b"S'" + b"".join(self._escape[b] for b in obj) + b"'\n")
        elif isinstance(obj, str):
            data = obj.encode("raw-unicode-escape")
            if p2:
                w(b"X" + struct.pack("<I", len(data)) + data)
            else:
                w(b"V" + data.replace(b"\\", b"\\u005c").replace(b"\n", b"\\u000a") + b"\n")
        elif isinstance(obj, tuple):
            if p2 and len(obj) <= 3:
                for item in obj:
                    self._save(item)
                w([b")", b"\x85", b"\x86", b"\x87"][len(obj)])
            else:
                w(b"(")
                for item in obj:
                    self._save(item)
                w(b"t")
        elif isinstance(obj, dict):
            w(b"}(" if p2 else b"(d")
            for key, value in obj.items():
                self._save(key)
                self._save(value)
                if not p2:
                    w(b"s")
            if p2:
                w(b"u")
        elif isinstance(obj, Global):
            w(b"c%s\n%s\n" % (obj.module.encode(), obj.name.encode()))
        elif isinstance(obj, Call):
            self._save(obj.func)
            self._save(obj.args)
            w(b"R")
            if obj.state is not None:
                self._save(obj.state)
                w(b"b")
        elif isinstance(obj, np.ndarray):
            self._save(array_call(obj))
        else:
            raise TypeError(f"cannot write {type(obj).__name__} as a Python 2 pickle")


def array_call(a: np.ndarray) -> Call:
    """What Python 2 numpy's ``ndarray.__reduce__`` gives (little-endian float32 data)."""
    a = np.ascontiguousarray(a, dtype="<f4")
    dtype = Call(Global("numpy", "dtype"), (b"f4", 0, 1), (3, b"<", None, None, None, -1, -1, 0))
    return Call(
        Global("numpy.core.multiarray", "_reconstruct"),
        (Global("numpy", "ndarray"), (0,), b"b"),
        (1, tuple(a.shape), dtype, False, a.tobytes()),
    )


def write_detectron_pickle(
    path: str | Path,
    blobs: dict[str, Any],
    cfg_text: str | None,
    *,
    protocol: int = 2,
    unicode_names: tuple[str, ...] = (),
) -> Path:
    """Write ``{'blobs': blobs, 'cfg': cfg_text}`` as Python 2 does. Blob names are Python 2
    ``str`` except those in ``unicode_names`` (the surgery scripts' ``unicode_literals``
    names); the cfg is ``str`` as ``yaml.dump`` returns it."""
    path = Path(path)
    named = {(n if n in unicode_names else n.encode()): v for n, v in blobs.items()}
    top: dict[Any, Any] = {b"blobs": named}
    if cfg_text is not None:
        top[b"cfg"] = cfg_text.encode()
    with open(path, "wb") as f:
        Py2Pickler(f, protocol).dump(top)
    return path


def write_spec_file(
    path: str | Path,
    spec: Spec,
    *,
    protocol: int = 2,
    seed: int = 0,
    edits: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, np.ndarray]]:
    """A complete released-style file for ``spec``; ``edits`` change the blob dict first
    (a value of None removes the blob). Returns the path and the blobs written."""
    blobs = make_blobs(spec, seed)
    for name, value in (edits or {}).items():
        if value is None:
            blobs.pop(name)
        else:
            blobs[name] = value
    backups = tuple(n for n in blobs if n.endswith("_jcvbackup"))
    write_detectron_pickle(
        path, blobs, stage2_cfg_text(spec), protocol=protocol, unicode_names=backups
    )
    return Path(path), blobs
