"""Where does weight transfer fail? Three diagnostics on finished experiment runs.

* :func:`row_drift`: how far each class row of ``cls_score`` / ``bbox_pred`` (w_det) moved
  from its initial value, ‖W − W₀‖ / ‖W₀‖ — if it is small, τ reads mostly the random start.
* :func:`ridge_tau`: on the oracle (per-class kernels learned from masks of every class), fit
  a ridge regression from w_det to the learned kernels on A's rows only, predict B's kernels
  and score B. Is ``w_seg`` predictable from ``w_det`` at all, with these features?
* :func:`kernel_ceiling`: freeze a trained transfer model and learn free per-class kernels for
  B on B's masks, then score B: the most any τ could give with these features.

Every score goes through ``training.evaluate_cli.run_evaluation`` (the one evaluation
routine, as ``maskx evaluate --mask-classes``) on a checkpoint written next to the run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import load_checkpoint, save_atomic


def _rebuild_initial_model(run_folder: Path) -> Any:
    """The model exactly as ``train`` built it before step 0 (same seed, same calls)."""
    import yaml

    from model import build_model
    from training.config import TrainConfig
    from training.datasets.build import build_datasets
    from training.trainer import resolve_model_config

    cfg = TrainConfig.from_dict(yaml.safe_load((run_folder / "config.yaml").read_text()))
    torch.manual_seed(cfg.train.seed)
    _train, _val, vocab = build_datasets(cfg)
    cfg = resolve_model_config(cfg, len(vocab))
    return build_model(cfg.model), vocab


def row_drift(run_folder: Path, root: Path | None = None) -> dict[str, Any]:
    """Median over classes of ‖W_c − W₀_c‖ / ‖W₀_c‖ for the ``cls`` and ``box`` rows of w_det,
    separately for A and B of ``root/mask_classes_A.txt`` (else the run's own split; the
    oracle's own has no B). ``W₀`` is rebuilt from the run's seed with the same calls as the
    training loop (checked: a stage-1 run's frozen mask branch comes out bit-identical)."""
    init, vocab = _rebuild_initial_model(run_folder)
    final = load_checkpoint(run_folder / "checkpoints" / "model_final.pt")["model"]
    start = init.state_dict()
    if root is not None and (root / "mask_classes_A.txt").is_file():
        vocab = vocab.with_mask_split(root / "mask_classes_A.txt")
    in_a = torch.tensor(list(vocab.mask_classes))
    out: dict[str, Any] = {}
    for kind, key, width in (("cls", "cls_score", 1), ("box", "bbox_pred", 4)):
        name = f"roi_heads.box_predictor.{key}.weight"
        w0 = start[name].view(-1, width * start[name].shape[1])[1:]
        w = final[name].view(-1, width * final[name].shape[1])[1:]
        ratio = (w - w0).norm(dim=1) / w0.norm(dim=1)
        out[kind] = {
            "A": round(float(ratio[in_a].median()), 3),
            "B": round(float(ratio[~in_a].median()), 3),
            "init_row_norm": round(float(w0.norm(dim=1).median()), 4),
            "final_row_norm": round(float(w.norm(dim=1).median()), 4),
        }
    return out


def _score(ckpt: dict[str, Any], path: Path, root: Path, split: Path) -> dict[str, Any]:
    from training.evaluate_cli import run_evaluation

    save_atomic(ckpt, path)
    data = ckpt["train_config"]["data"]
    return run_evaluation(
        str(path), str(root / data["val_annotations"]), str(root / data["val_images"]),
        device="cpu", batch_size=8, workers=0, progress=False, mask_classes=str(split),
    )  # fmt: skip


def _ridge_fit_predict(x_a: torch.Tensor, y_a: torch.Tensor, x_b: torch.Tensor) -> tuple:
    """Kernel ridge with an intercept; λ chosen by leave-one-out error on A.

    The intercept is a constant feature (scaled to the rows' mean norm), not centring:
    centring makes the A kernel matrix singular, and the leave-one-out shortcut
    ``e_i = (y_i − ŷ_i) / (1 − H_ii)`` then divides by zero.
    """
    s = float(x_a.norm(dim=1).mean())
    ones_a = torch.full((len(x_a), 1), s, dtype=x_a.dtype)
    ones_b = torch.full((len(x_b), 1), s, dtype=x_b.dtype)
    xa, xb = torch.cat([x_a, ones_a], 1), torch.cat([x_b, ones_b], 1)
    ya, my = y_a, y_a.mean(0)
    k = xa @ xa.T
    scale = float(k.trace()) / len(k)
    best = None
    for rel in (1e-3, 1e-2, 1e-1, 1.0, 10.0):
        lam = rel * scale
        inv = torch.linalg.inv(k + lam * torch.eye(len(k), dtype=k.dtype))
        h = k @ inv
        resid = (ya - h @ ya) / (1 - torch.diagonal(h))[:, None]
        loo = float((resid**2).sum())
        if best is None or loo < best[0]:
            best = (loo, rel, inv)
    assert best is not None
    loo, rel, inv = best
    pred = (xb @ xa.T) @ inv @ ya
    total = float(((ya - my) ** 2).sum())
    return pred, {"lambda_rel": rel, "loo_r2_on_A": round(1 - loo / total, 3)}


def ridge_tau(oracle_folder: Path, root: Path, kind: str = "cls+box") -> dict[str, Any]:
    """Offline τ: ridge from the oracle's w_det (``kind``) to its own kernels, fit on A,
    B's kernels predicted; writes ``ridge_tau.pt`` and returns its scores (AP in percent)."""
    from model import ModelConfig, build_model

    path = oracle_folder / "checkpoints" / "model_final.pt"
    ckpt = load_checkpoint(path)
    model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    split = root / "mask_classes_A.txt"
    a_names = set(split.read_text(encoding="utf-8").split())
    names = ckpt["vocab"]["names"]
    in_a = torch.tensor([n in a_names for n in names])
    labels = torch.arange(1, len(names) + 1)
    with torch.no_grad():
        x = model.roi_heads.box_predictor.detection_embedding(labels, kind).double()
        conv = model.roi_heads.mask_predictor.mask_fcn_logits
        y = torch.cat([conv.weight.flatten(1)[1:], conv.bias[1:, None]], dim=1).double()
    pred, fit = _ridge_fit_predict(x[in_a], y[in_a], x[~in_a])
    cos = torch.nn.functional.cosine_similarity(pred[:, :-1], y[~in_a][:, :-1], dim=1)
    state = dict(ckpt["model"])
    w = state["roi_heads.mask_predictor.mask_fcn_logits.weight"].clone()
    b = state["roi_heads.mask_predictor.mask_fcn_logits.bias"].clone()
    b_labels = labels[~in_a]
    w[b_labels] = pred[:, :-1].float().view(len(b_labels), *w.shape[1:])
    b[b_labels] = pred[:, -1].float()
    state["roi_heads.mask_predictor.mask_fcn_logits.weight"] = w
    state["roi_heads.mask_predictor.mask_fcn_logits.bias"] = b
    metrics = _score({**ckpt, "model": state}, oracle_folder / "ridge_tau.pt", root, split)
    true_boxes = true_box_mask_ap(oracle_folder, root, checkpoint=oracle_folder / "ridge_tau.pt")
    return {
        **fit,
        "kind": kind,
        "cosine_to_oracle_B_kernels": round(float(cos.median()), 3),
        "mask_AP_B": _pct(metrics, "segm", "B"),
        "mask_AP_A": _pct(metrics, "segm", "A"),
        "true_box_mask_AP_B": true_boxes["mask_AP_B"],
        "true_box_mask_AP_A": true_boxes["mask_AP_A"],
    }


def kernel_ceiling(
    run_folder: Path, root: Path, steps: int = 150, batch_size: int = 8, lr: float = 0.01
) -> dict[str, Any]:
    """Freeze a trained transfer model, give every class a free kernel (started at τ(w_det)),
    train only B's kernels on B's masks, and score: the most any τ could give B with these
    features. Writes ``ceiling.pt`` and returns its scores (AP in percent)."""
    from model import ModelConfig, build_model
    from training.datasets import CocoDataset, build_data_loader

    ckpt = load_checkpoint(run_folder / "checkpoints" / "model_final.pt")
    src = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    src.load_state_dict(ckpt["model"])
    cfg = ModelConfig.from_dict(ckpt["model_config"]).replace(mask_predictor="class_specific")
    torch.manual_seed(0)
    model = build_model(cfg)
    own = model.state_dict()
    state = {k: v for k, v in ckpt["model"].items() if k in own}
    with torch.no_grad():
        kernels = src.roi_heads.mask_predictor.all_class_kernels(src.roi_heads.box_predictor)
    d = kernels.shape[1]
    state["roi_heads.mask_predictor.mask_fcn_logits.weight"] = torch.cat(
        [torch.zeros(1, d), kernels]
    ).view(-1, d, 1, 1)
    state["roi_heads.mask_predictor.mask_fcn_logits.bias"] = torch.zeros(len(kernels) + 1)
    model.load_state_dict(state)

    split = root / "mask_classes_A.txt"
    a_names = set(split.read_text(encoding="utf-8").split())
    names = ckpt["vocab"]["names"]
    b_file = run_folder / "ceiling_B_classes.txt"
    b_file.write_text("\n".join(n for n in names if n not in a_names) + "\n", encoding="utf-8")
    data = ckpt["train_config"]["data"]
    train_set = CocoDataset(root / data["train_annotations"], root / data["train_images"],
                            mask_classes=str(b_file))  # fmt: skip
    loader = build_data_loader(
        train_set, min(batch_size, len(train_set)), workers=0, shuffle=True, seed=0
    )
    for p in model.parameters():
        p.requires_grad_(False)
    conv = model.roi_heads.mask_predictor.mask_fcn_logits
    conv.weight.requires_grad_(True)
    conv.bias.requires_grad_(True)
    opt = torch.optim.Adam([conv.weight, conv.bias], lr=lr)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()  # frozen statistics: the features are the trained model's
    step = 0
    while step < steps:
        for images, targets in loader:
            losses = model(list(images), [dict(t) for t in targets])
            opt.zero_grad(set_to_none=True)
            losses["loss_mask"].backward()
            opt.step()  # only B rows get a gradient: A instances carry no mask here
            step += 1
            if step >= steps:
                break
    model.eval()
    ckpt_out = {**ckpt, "model": model.state_dict(), "model_config": cfg.to_dict()}
    metrics = _score(ckpt_out, run_folder / "ceiling.pt", root, split)
    true_boxes = true_box_mask_ap(run_folder, root, checkpoint=run_folder / "ceiling.pt")
    return {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "mask_AP_B": _pct(metrics, "segm", "B"),
        "mask_AP_A": _pct(metrics, "segm", "A"),
        "true_box_mask_AP_B": true_boxes["mask_AP_B"],
        "true_box_mask_AP_A": true_boxes["mask_AP_A"],
    }


def _pct(metrics: dict[str, Any], iou: str, subset: str) -> float | None:
    v = metrics.get(iou, {}).get(subset, {}).get("AP")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(100 * v, 3)


def true_box_mask_ap(
    run_folder: Path, root: Path, batch_size: int = 8, checkpoint: Path | None = None
) -> dict[str, Any]:
    """Mask AP when the model is handed every true box with its true class (score 1).

    This isolates the mask branch from detection: end-to-end mask AP is bounded by box AP,
    and on a set where detection is weak it says little about the masks. Scored with the
    same pycocotools routine (``training.evaluation.coco_evaluate``) on the A/B split of
    ``root/mask_classes_A.txt``. Returns ``{"mask_AP_B", "mask_AP_A", "mask_AP50_B"}`` in
    percent.
    """
    from training.checkpoint import load_model_from_checkpoint
    from training.datasets import CocoDataset, build_data_loader
    from training.evaluation import coco_evaluate, predictions_to_coco_results

    path = checkpoint or run_folder / "checkpoints" / "model_final.pt"
    model, vocab, ckpt = load_model_from_checkpoint(path)
    split = root / "mask_classes_A.txt"
    vocab = vocab.with_mask_split(split)
    data = (ckpt.train_config or {})["data"]
    dataset = CocoDataset(root / data["val_annotations"], root / data["val_images"], vocab=vocab)
    loader = build_data_loader(dataset, batch_size, workers=0, shuffle=False)
    results: list[dict[str, Any]] = []
    with torch.inference_mode():
        for images, targets in loader:
            sizes = [tuple(img.shape[-2:]) for img in images]
            boxed = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
            batch, boxed = model.transform(list(images), boxed)
            features = model.backbone(batch.tensors)
            probs = model.roi_heads.predict_masks(
                features, [t["boxes"] for t in boxed], [t["labels"] for t in boxed],
                batch.image_sizes,
            )  # fmt: skip
            out = [
                {"boxes": t["boxes"], "labels": t["labels"], "masks": p[:, None],
                 "scores": torch.ones(len(t["labels"]))}
                for t, p in zip(boxed, probs, strict=True)
            ]  # fmt: skip
            out = model.transform.postprocess(out, batch.image_sizes, sizes)
            for o, t in zip(out, targets, strict=True):
                o["image_id"] = t["image_id"]
            results += predictions_to_coco_results(out, vocab)
    metrics = coco_evaluate(dataset.coco, results, vocab, ("segm",))
    seg = metrics["segm"]

    def pct(subset: str, stat: str) -> float | None:
        v = seg.get(subset, {}).get(stat)
        return None if v is None else round(100 * float(v), 3)

    return {
        "mask_AP_B": pct("B", "AP"),
        "mask_AP50_B": pct("B", "AP50"),
        "mask_AP_A": pct("A", "AP"),
    }


def hue_neighbour_share(run_folder: Path, root: Path) -> dict[str, float]:
    """``hue_ring`` set only: share of B classes whose cosine-nearest A class in w_det (cls,
    box, cls+box) is one of the two A classes next to it on the ring — what τ needs in order
    to interpolate. Chance: 2 / |A|. Reads the categories' ``hue``."""
    import json

    ckpt = load_checkpoint(run_folder / "checkpoints" / "model_final.pt")
    from model import ModelConfig, build_model

    model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    cats = json.loads((root / "annotations" / "instances_val.json").read_text())["categories"]
    hue = {c["name"]: float(c["hue"]) for c in cats}
    names = ckpt["vocab"]["names"]
    a_names = set((root / "mask_classes_A.txt").read_text(encoding="utf-8").split())
    a_idx = [i for i, n in enumerate(names) if n in a_names]
    b_idx = [i for i, n in enumerate(names) if n not in a_names]
    step = 360.0 / len(names)
    out: dict[str, float] = {"chance": round(2 / len(a_idx), 3)}
    labels = torch.arange(1, len(names) + 1)
    for kind in ("cls", "box", "cls+box"):
        with torch.no_grad():
            v = model.roi_heads.box_predictor.detection_embedding(labels, kind)
        v = torch.nn.functional.normalize(v, dim=1)
        nearest = (v[b_idx] @ v[a_idx].T).argmax(dim=1).tolist()
        hits = 0
        for b, j in zip(b_idx, nearest, strict=True):
            d = abs(hue[names[b]] - hue[names[a_idx[j]]]) % 360.0
            hits += min(d, 360.0 - d) < 2.5 * step  # an A class adjacent on the ring
        out[kind] = round(hits / len(b_idx), 3)
    return out
