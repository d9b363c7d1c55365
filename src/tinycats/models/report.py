"""The classifier's report on a split: accuracy, macro-F1 and per-class scores as JSON, and the
confusion matrix as a PNG a person can read."""

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from tinycats.atomic import write_atomically

CELL = 44  # pixels per matrix cell: room for a four-digit count
MARGIN = 8
EMPTY_COLOUR = (255, 255, 255)
FULL_COLOUR = (33, 84, 160)


def classification_report(matrix: Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision, recall, F1 and support of a confusion matrix."""
    matrix = torch.as_tensor(matrix, dtype=torch.long)
    num_classes = len(class_names)
    if matrix.shape != (num_classes, num_classes) or matrix.sum() == 0:
        raise ValueError(
            f"expected a non-empty {num_classes}x{num_classes} confusion matrix, "
            f"got {tuple(matrix.shape)} with {int(matrix.sum())} samples"
        )
    # Expanding the counts back into (prediction, target) pairs lets torchmetrics compute every
    # score, with the same definitions as the test/acc and test/f1 that training logs.
    classes = torch.arange(num_classes)
    counts = matrix.flatten()
    target = classes.repeat_interleave(num_classes).repeat_interleave(counts)
    preds = classes.repeat(num_classes).repeat_interleave(counts)
    per_class = {
        name: score(preds, target, num_classes, average="none").tolist()
        for name, score in (
            ("precision", multiclass_precision),
            ("recall", multiclass_recall),
            ("f1", multiclass_f1_score),
        )
    }
    support = matrix.sum(dim=1).tolist()
    return {
        "num_images": int(matrix.sum()),
        "accuracy": multiclass_accuracy(preds, target, num_classes, average="micro").item(),
        "macro_f1": multiclass_f1_score(preds, target, num_classes, average="macro").item(),
        "per_class": {
            name: {**{key: values[i] for key, values in per_class.items()}, "support": support[i]}
            for i, name in enumerate(class_names)
        },
        "classes": list(class_names),
        "confusion_matrix": matrix.tolist(),
        "matrix_layout": "rows: true class, columns: predicted class",
    }


def write_report(matrix: Tensor, class_names: Sequence[str], out_dir: Path, stage: str) -> dict:
    """Write the report as ``report_<stage>.json`` and ``confusion_<stage>.png``; return it."""
    report = {"stage": stage, **classification_report(matrix, class_names)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(
        out_dir / f"report_{stage}.json", lambda p: p.write_text(json.dumps(report, indent=1))
    )
    title = (
        f"{stage} split, {report['num_images']} images: accuracy {report['accuracy']:.3f}, "
        f"macro-F1 {report['macro_f1']:.3f}"
    )
    picture = draw_confusion(torch.as_tensor(matrix), class_names, title)
    write_atomically(out_dir / f"confusion_{stage}.png", lambda p: picture.save(p, format="PNG"))
    return report


def draw_confusion(matrix: Tensor, class_names: Sequence[str], title: str) -> Image.Image:
    """The confusion matrix as an image: counts in cells shaded by their share of the true class."""
    num_classes = len(class_names)
    font = ImageFont.load_default(size=13)
    bold = ImageFont.load_default(size=15)
    line = _text_height("Ag", font)
    names_width = max(math.ceil(font.getlength(name)) for name in class_names)
    subtitle = "rows: true class, columns: predicted class; shade: share of the row"
    left = MARGIN + line + MARGIN + names_width + MARGIN
    top = MARGIN + 3 * (line + MARGIN) + names_width + MARGIN
    width = max(
        left + num_classes * CELL + MARGIN,
        MARGIN + math.ceil(max(bold.getlength(title), font.getlength(subtitle))) + MARGIN,
    )
    canvas = Image.new("RGB", (width, top + num_classes * CELL + MARGIN), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, MARGIN), title, fill="black", font=bold)
    draw.text((MARGIN, 2 * MARGIN + line), subtitle, fill="dimgray", font=font)
    cells_middle = (left + num_classes * CELL / 2, top + num_classes * CELL / 2)
    draw.text(
        (cells_middle[0], 3 * MARGIN + 2 * line),
        "predicted class",
        fill="black",
        font=font,
        anchor="mt",
    )
    axis = _vertical_text("true class", font)
    _paste_black(canvas, axis, MARGIN, round(cells_middle[1]) - axis.height // 2)

    row_totals = matrix.sum(dim=1).clamp(min=1)
    for i, name in enumerate(class_names):
        middle = top + i * CELL + CELL // 2
        draw.text((left - MARGIN, middle), name, fill="black", font=font, anchor="rm")
        label = _vertical_text(name, font)
        _paste_black(
            canvas, label, left + i * CELL + (CELL - label.width) // 2, top - MARGIN - label.height
        )
        for j in range(num_classes):
            share = matrix[i, j].item() / row_totals[i].item()
            _draw_cell(draw, (left + j * CELL, top + i * CELL), matrix[i, j].item(), share, font)
    return canvas


def _draw_cell(
    draw: ImageDraw.ImageDraw,
    corner: tuple[int, int],
    count: int,
    share: float,
    font: ImageFont.FreeTypeFont,
) -> None:
    """One cell: ``count`` on a shade from empty to full by ``share`` (of its true class)."""
    colour = tuple(
        round(e + share * (f - e)) for e, f in zip(EMPTY_COLOUR, FULL_COLOUR, strict=True)
    )
    x, y = corner
    draw.rectangle((x, y, x + CELL, y + CELL), fill=colour, outline="lightgray")
    draw.text(
        (x + CELL / 2, y + CELL / 2),
        str(count),
        font=font,
        fill="white" if share > 0.5 else "black",
        anchor="mm",
    )


def _text_height(text: str, font: ImageFont.FreeTypeFont) -> int:
    return font.getbbox(text)[3]


def _vertical_text(text: str, font: ImageFont.FreeTypeFont) -> Image.Image:
    """A mask of text that reads bottom to top (column labels and the row axis' title)."""
    mask = Image.new("L", (math.ceil(font.getlength(text)), _text_height(text, font)), 0)
    ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=font)
    return mask.rotate(90, expand=True)


def _paste_black(canvas: Image.Image, mask: Image.Image, x: int, y: int) -> None:
    canvas.paste((0, 0, 0), (x, y, x + mask.width, y + mask.height), mask)
