"""Boxes, labels and scores drawn on an image (PIL)."""
from PIL import Image, ImageDraw

_COLORS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def draw_boxes(image_path, pred, names, threshold, out_path):
    """Draw the rows of pred ([label, score, x1, y1, x2, y2]) with score >= threshold; returns how many."""
    image = Image.open(image_path).convert("RGB")
    draw = ImageDraw.Draw(image)
    shown = 0
    for label, score, x1, y1, x2, y2 in pred:
        if score < threshold or label < 0:
            continue
        color = _COLORS[int(label) % len(_COLORS)]
        draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
        text = f"{names[int(label)]} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        y_text = max(y1 - (bottom - top) - 2, 0)
        draw.rectangle([x1, y_text, x1 + (right - left) + 2, y_text + (bottom - top) + 2], fill=color)
        draw.text((x1 + 1, y_text), text, fill=(0, 0, 0))
        shown += 1
    image.save(out_path)
    return shown
