"""Box and mask predictors: the layers that turn RoI features into class-specific outputs.

Vocabulary follows torchvision: a *head* computes RoI features, a *predictor* turns them into
logits. Parameter names match torchvision's ``FastRCNNPredictor`` (``cls_score``,
``bbox_pred``) and ``MaskRCNNPredictor`` (``conv5_mask``, ``mask_fcn_logits``) so that
torchvision state dicts load unchanged.

Every mask predictor answers one question — "the M×M mask logits of RoI i for class l_i" —
through a per-RoI kernel ``(weight [N, D], bias [N])`` applied to the deconv feature map.
Nothing of shape ``[N, K, M, M]`` is ever built, so cost and memory do not grow with K.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from .config import TRANSFER_ACTIVATIONS


class ClassSpecificBoxPredictor(nn.Module):
    """Classification + class-specific box regression (torchvision ``FastRCNNPredictor``).

    Args:
        in_channels: D, the box head's feature width (1024 in the paper).
        num_classes: K + 1 (background included).
        init: ``paper`` (default): weights N(0, 0.01) for ``cls_score`` and N(0, 0.001) for
            ``bbox_pred``, biases 0, as in the authors' Detectron code; ``torch``: PyTorch's
            default ``nn.Linear`` init (what earlier versions used; kept for comparison).

    Besides the torchvision ``forward`` (all classes), it offers :meth:`box_deltas` that
    regresses only the requested class of each RoI — the training loss and inference need no
    more, and the full ``[R, 4(K+1)]`` product costs 12 GFLOP per image at K=3000.
    """

    def __init__(self, in_channels: int, num_classes: int, init: str = "paper") -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        if init == "paper":
            # Detectron's fast_rcnn_heads (the authors' code). These rows are w_det, the input
            # of weight transfer: they should be mostly learned, not their random start, and
            # PyTorch's default Linear init is 18-36x larger at D = 256..1024.
            nn.init.normal_(self.cls_score.weight, std=0.01)
            nn.init.normal_(self.bbox_pred.weight, std=0.001)
            nn.init.zeros_(self.cls_score.bias)
            nn.init.zeros_(self.bbox_pred.bias)
        elif init != "torch":
            raise ValueError(f"init must be 'paper' or 'torch', got {init!r}")

    @property
    def num_classes(self) -> int:
        return self.cls_score.out_features

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [R, D] (or [R, D, 1, 1]) → (class logits [R, K+1], box deltas [R, 4(K+1)])."""
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)

    def class_logits(self, x: Tensor) -> Tensor:
        """x: [R, D] → class logits [R, K+1]."""
        return self.cls_score(x.flatten(start_dim=1))

    def box_deltas(self, x: Tensor, labels: Tensor) -> Tensor:
        """Box deltas of one class per RoI.

        Args:
            x: [R, D] box features.
            labels: int64 [R], class of each row (0..K).
        Returns:
            [R, 4] deltas (dx, dy, dw, dh), equal to ``forward(x)[1].view(R, -1, 4)[r, labels[r]]``.
        """
        x = x.flatten(start_dim=1)
        weight = self.bbox_pred.weight.view(-1, 4, x.shape[1])[labels]  # [R, 4, D]
        bias = self.bbox_pred.bias.view(-1, 4)[labels]  # [R, 4]
        # bmm rather than einsum: ONNX Runtime's Einsum crashes (SIGFPE) on zero rows.
        return torch.bmm(weight, x[:, :, None])[:, :, 0] + bias

    def detection_embedding(self, labels: Tensor, kind: str) -> Tensor:
        """w_det of the given classes: ``cls`` [N, D], ``box`` [N, 4D] or ``cls+box`` [N, 5D]."""
        parts = []
        if kind in ("cls", "cls+box"):
            parts.append(self.cls_score.weight[labels])
        if kind in ("box", "cls+box"):
            d = self.bbox_pred.in_features
            parts.append(self.bbox_pred.weight.view(-1, 4 * d)[labels])
        return torch.cat(parts, dim=1)


def embedding_dim(kind: str, box_head_dim: int) -> int:
    """Width of the detection embedding w_det for ``kind`` (5120 for cls+box with D=1024)."""
    return {"cls": 1, "box": 4, "cls+box": 5}[kind] * box_head_dim


class WeightTransfer(nn.Module):
    """τ(·; θ): detection embedding w_det [N, E] → mask kernel w_seg [N, C].

    Reference structure (2 layers): ``FC(E→H) → LeakyReLU(0.1) → FC(H→C)``, no activation at
    the end; 1 layer is a single FC; 3 layers add one more ``FC(H→H) → act``.

    Initialisation as the authors' ``bbox2mask_weight_transfer``: every layer Caffe2
    ``MSRAFill`` (normal, std √(2 / out_features): Kaiming with ``fan_out``, as detectron2's
    ``c2_msra_fill``), biases 0. Each layer uses its own size: the 3-layer τ's middle
    ``FC(H→H)`` gets √(2 / H), not a width taken from the input layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 256,
        num_layers: int = 2,
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__()
        if num_layers not in (1, 2, 3):
            raise ValueError(f"num_layers must be 1, 2 or 3, got {num_layers}")
        if activation not in TRANSFER_ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {TRANSFER_ACTIVATIONS}, got {activation!r}"
            )

        def act() -> nn.Module:
            return nn.LeakyReLU(0.1) if activation == "leaky_relu" else nn.ReLU()

        dims = [in_features] + [hidden] * (num_layers - 1) + [out_features]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(act())
        self.layers = nn.Sequential(*layers)
        for m in self.layers:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=(2.0 / m.out_features) ** 0.5)
                nn.init.zeros_(m.bias)

    def forward(self, w_det: Tensor) -> Tensor:
        return self.layers(w_det)


class MLPMaskBranch(nn.Module):
    """Class-agnostic MLP mask branch fused with the FCN logits (paper §3.4).

    Reads the predictor's deconv feature map [N, C, M, M], average-pools it to
    ``input_size``×``input_size`` (M keeps the reference's full 157 M-weight layer at C=256),
    and predicts one M×M logit map per RoI with a single FC layer.
    """

    def __init__(self, in_channels: int, input_size: int, mask_size: int = 28) -> None:
        super().__init__()
        if mask_size % input_size:
            raise ValueError(f"MLP input_size must divide {mask_size}, got {input_size}")
        self.input_size = input_size
        self.mask_size = mask_size
        self.fc = nn.Linear(in_channels * input_size * input_size, mask_size * mask_size)
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, C, M, M] → logits [N, M, M]."""
        if self.input_size != self.mask_size:
            # A fixed kernel (not adaptive pooling) so that the ONNX export has static shapes.
            k = self.mask_size // self.input_size
            x = F.avg_pool2d(x, kernel_size=k, stride=k)
        return self.fc(x.flatten(start_dim=1)).view(-1, self.mask_size, self.mask_size)


class MaskPredictor(nn.Module):
    """Base: deconv ×2 then a per-RoI 1×1 kernel, plus the optional fused MLP branch.

    Subclasses define :meth:`class_kernels`. ``forward`` contract:

    Args:
        features: [N, C_in, 14, 14] mask-head features of N RoIs.
        labels: int64 [N], the class (1..K) whose mask each RoI needs — the ground-truth class in
            training, the predicted class in inference.
        box_predictor: the model's :class:`ClassSpecificBoxPredictor` (read by the transfer
            predictor for w_det; ignored by the others).
    Returns:
        mask logits [N, 28, 28] for each RoI's class.
    """

    def __init__(
        self, in_channels: int, dim_reduced: int, mlp: MLPMaskBranch | None = None
    ) -> None:
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2, 0)
        self.relu5 = nn.ReLU(inplace=True)
        self.mlp = mlp
        nn.init.kaiming_normal_(self.conv5_mask.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv5_mask.bias)

    def mask_features(self, features: Tensor) -> Tensor:
        """[N, C_in, 14, 14] → deconv features [N, D, 28, 28]."""
        return self.relu5(self.conv5_mask(features))

    def class_kernels(
        self, labels: Tensor, box_predictor: ClassSpecificBoxPredictor | None
    ) -> tuple[Tensor, Tensor | None]:
        """Per-label 1×1 kernels: (weight [N, D], bias [N] or None)."""
        raise NotImplementedError

    def logits_from_features(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """Apply per-RoI kernels to deconv features x [N, D, M, M] → [N, M, M] (+ MLP)."""
        if torchvision._is_tracing():
            # A broadcast matmul, not einsum or a flattening reshape: both fail in ONNX Runtime
            # when there are no detections (Einsum divides by zero; Reshape cannot infer a -1).
            logits = torch.matmul(
                x.permute(0, 2, 3, 1)[..., None, :], weight[:, None, None, :, None]
            )[..., 0, 0]
        else:
            # Eager: one [1, D] x [D, M*M] product per RoI on a view of x. The broadcast form
            # above copies x and N*M*M expanded kernels and runs N*M*M products of length D (in
            # backward too): 6-9x the time at 100-250 mask RoIs, the same values.
            n, d, h, w = x.shape
            logits = torch.bmm(weight[:, None, :], x.reshape(n, d, h * w)).view(n, h, w)
        if bias is not None:
            logits = logits + bias[:, None, None]
        if self.mlp is not None:
            logits = logits + self.mlp(x)
        return logits

    def forward(
        self,
        features: Tensor,
        labels: Tensor,
        box_predictor: ClassSpecificBoxPredictor | None = None,
    ) -> Tensor:
        x = self.mask_features(features)
        weight, bias = self.class_kernels(labels, box_predictor)
        return self.logits_from_features(x, weight, bias)


class ClassSpecificMaskPredictor(MaskPredictor):
    """Plain Mask R-CNN: one learned 1×1 kernel per class (K+1 output channels).

    Same parameters as torchvision's ``MaskRCNNPredictor``; only each RoI's own class channel is
    computed (a row gather) instead of all K+1 channels.
    """

    def __init__(
        self,
        in_channels: int,
        dim_reduced: int,
        num_classes: int,
        mlp: MLPMaskBranch | None = None,
    ) -> None:
        super().__init__(in_channels, dim_reduced, mlp)
        self.mask_fcn_logits = nn.Conv2d(dim_reduced, num_classes, 1, 1, 0)
        nn.init.kaiming_normal_(self.mask_fcn_logits.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.mask_fcn_logits.bias)

    def class_kernels(
        self, labels: Tensor, box_predictor: ClassSpecificBoxPredictor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        weight = self.mask_fcn_logits.weight.flatten(start_dim=1)  # [K+1, D]
        return weight[labels], self.mask_fcn_logits.bias[labels]


class ClassAgnosticMaskPredictor(MaskPredictor):
    """The paper's class-agnostic baseline: one mask for every class."""

    def __init__(
        self, in_channels: int, dim_reduced: int, mlp: MLPMaskBranch | None = None
    ) -> None:
        super().__init__(in_channels, dim_reduced, mlp)
        self.mask_fcn_logits = nn.Conv2d(dim_reduced, 1, 1, 1, 0)
        # Kaiming with fan_out=1 would start with logits in the tens; detectron2's small normal.
        nn.init.normal_(self.mask_fcn_logits.weight, std=0.001)
        nn.init.zeros_(self.mask_fcn_logits.bias)

    def class_kernels(
        self, labels: Tensor, box_predictor: ClassSpecificBoxPredictor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        n = labels.shape[0]
        weight = self.mask_fcn_logits.weight.flatten(start_dim=1)  # [1, D]
        return weight.expand(n, -1), self.mask_fcn_logits.bias.expand(n)


FIXED_CLASS_INPUTS = ("random", "attribute")
"""τ inputs that are fixed per-class vectors instead of detection weights (controls)."""


class WeightTransferMaskPredictor(MaskPredictor):
    """Mask^X: ``w_seg^c = τ(stopgrad(w_det^c))``, a bias-free 1×1 kernel per class.

    τ runs only on the distinct labels of the call (at most N rows), so its cost does not grow
    with K; :meth:`all_class_kernels` computes ``W_seg`` [K, D] once for export.

    Controls for τ's input (``transfer_input`` ``random`` or ``attribute``): τ reads a fixed,
    untrained vector per class from the buffer ``class_vectors`` [K+1, E] (row 0, background,
    is zero) instead of w_det — a random vector per class (the paper's control: τ can then only
    memorise A) or a description of the class (an upper bound for an embedding). Pass the
    vectors as ``class_vectors``; the buffer is saved with the state dict.
    """

    def __init__(
        self,
        in_channels: int,
        dim_reduced: int,
        box_head_dim: int,
        transfer_input: str = "cls+box",
        num_layers: int = 2,
        hidden: int = 256,
        activation: str = "leaky_relu",
        stop_gradient: bool = True,
        mlp: MLPMaskBranch | None = None,
        class_vectors: Tensor | None = None,
    ) -> None:
        super().__init__(in_channels, dim_reduced, mlp)
        allowed = ("cls", "box", "cls+box", *FIXED_CLASS_INPUTS)
        if transfer_input not in allowed:
            raise ValueError(
                f"transfer_input={transfer_input!r} is not supported; allowed values: {list(allowed)}"
            )
        self.transfer_input = transfer_input
        self.stop_gradient = stop_gradient
        self.class_vectors: Tensor | None
        if transfer_input in FIXED_CLASS_INPUTS:
            if class_vectors is None or class_vectors.ndim != 2:
                raise ValueError(
                    f"transfer_input={transfer_input!r} needs class_vectors [K+1, E], got "
                    f"{None if class_vectors is None else tuple(class_vectors.shape)}"
                )
            self.register_buffer("class_vectors", class_vectors.detach().float().clone())
            in_features = class_vectors.shape[1]
        else:
            self.class_vectors = None
            in_features = embedding_dim(transfer_input, box_head_dim)
        self.weight_transfer = WeightTransfer(
            in_features,
            dim_reduced,
            hidden=hidden,
            num_layers=num_layers,
            activation=activation,
        )

    def class_kernels(
        self, labels: Tensor, box_predictor: ClassSpecificBoxPredictor | None
    ) -> tuple[Tensor, Tensor | None]:
        unique, inverse = torch.unique(labels, return_inverse=True)
        if self.class_vectors is not None:
            return self.weight_transfer(self.class_vectors[unique])[inverse], None
        if box_predictor is None:
            raise ValueError("the weight-transfer mask predictor needs the box predictor's weights")
        w_det = box_predictor.detection_embedding(unique, self.transfer_input)
        if self.stop_gradient:
            w_det = w_det.detach()
        return self.weight_transfer(w_det)[inverse], None

    @torch.no_grad()
    def all_class_kernels(self, box_predictor: ClassSpecificBoxPredictor) -> Tensor:
        """W_seg for every class 1..K: [K, D] (row k is model label k+1)."""
        labels = torch.arange(
            1, box_predictor.num_classes, device=box_predictor.cls_score.weight.device
        )
        return self.class_kernels(labels, box_predictor)[0]
