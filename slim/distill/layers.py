"""List a model's named sublayers with their class, output shape(s) and parameter count.

    rows = list_layers(model, paddle.randn([1, 3, 256, 256]))
    print(format_layers(rows))

One forward in eval mode without gradients; every name printed can be used in a mapping or a
`distill:` pair. Layers that did not run in that forward show `-` as their shape.
"""
import paddle

from .adaptor import unwrap


def _shapes(value):
    if isinstance(value, paddle.Tensor):
        return [list(value.shape)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _shapes(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _shapes(v)]
    return []


def list_layers(model, *inputs, **kwargs):
    """Rows of {name, type, output_shapes, params, own_params} in `named_sublayers()` order."""
    model = unwrap(model)
    rows, handles = [], []
    for name, layer in model.named_sublayers():
        row = {"name": name, "type": type(layer).__name__, "output_shapes": None,
               "params": sum(int(p.size) for p in layer.parameters()),
               "own_params": sum(int(p.size) for p in layer.parameters(include_sublayers=False))}
        rows.append(row)

        def hook(layer, inp, out, row=row):
            row["output_shapes"] = _shapes(out)

        handles.append(layer.register_forward_post_hook(hook))
    forward_with_hooks(model, handles, *inputs, **kwargs)
    return rows


def forward_with_hooks(model, handles, *inputs, **kwargs):
    """One eval-mode, no-grad forward of model; then the hooks of `handles` are removed and the model's
    train/eval mode restored, whatever happens."""
    training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            model(*inputs, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
        if training:
            model.train()


def _fmt_shapes(shapes):
    if shapes is None:
        return "-"
    return ", ".join("x".join(map(str, s)) for s in shapes) or "(no tensor)"


def format_layers(rows, max_depth=None):
    """A plain-text table; `max_depth` keeps names with at most that many dots + 1 parts."""
    if max_depth is not None:
        rows = [r for r in rows if r["name"].count(".") < max_depth]
    header = ("name", "type", "output shape(s)", "params")
    table = [header] + [(r["name"], r["type"], _fmt_shapes(r["output_shapes"]), f"{r['params']:,}")
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = []
    for i, row in enumerate(table):
        lines.append("  ".join(row[j].ljust(widths[j]) for j in range(3)) + "  " + row[3].rjust(12))
        if i == 0:
            lines.append("-" * (sum(widths) + 6 + 12))
    return "\n".join(lines)
