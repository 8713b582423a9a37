"""List a model's named sublayers with their class, output shape(s) and parameter count.

    rows = list_layers(model, paddle.randn([1, 3, 256, 256]))
    print(format_layers(rows))

One forward in eval mode without gradients; every name printed can be used in a mapping or a
`distill:` pair. Layers that did not run in that forward show `-` as their shape. A transformer layer's
(N, L, D) tokens are shown with their patch grid and its stride against the input image (tokens.py), e.g.
`1x50x64 (1+7x7 tokens, stride 4)`: pair them with a CNN map of that stride through `tokens_to_map`.
"""
import paddle

from .adaptor import unwrap
from .tokens import token_grid


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
    image = next((x for x in inputs if isinstance(x, paddle.Tensor) and x.ndim == 4), None)
    rows, handles = [], []
    for name, layer in model.named_sublayers():
        row = {"name": name, "type": type(layer).__name__, "output_shapes": None,
               "params": sum(int(p.size) for p in layer.parameters()),
               "own_params": sum(int(p.size) for p in layer.parameters(include_sublayers=False))}
        rows.append(row)

        def hook(layer, inp, out, row=row):
            row["output_shapes"] = _shapes(out)
            row["tokens"] = tokens_of(out, image)

        handles.append(layer.register_forward_post_hook(hook))
    forward_with_hooks(model, handles, *inputs, **kwargs)
    return rows


def tokens_of(out, image):
    """{skip, grid, stride} when `out` is one (N, L, D) tensor of tokens on a patch grid of the (N, C, H, W)
    `image` (same N), else None."""
    if (image is None or not isinstance(out, paddle.Tensor) or out.ndim != 3 or out.shape[0] != image.shape[0]
            or out.shape[2] < 2):  # (N, C, 1) from a 1-D pooling is no token sequence
        return None
    return token_grid(int(out.shape[1]), image.shape[2:])


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


def _fmt_tokens(tokens):
    if not tokens:
        return ""
    h, w = tokens["grid"]
    lead = f"{tokens['skip']}+" if tokens["skip"] else ""
    return f" ({lead}{h}x{w} tokens, stride {tokens['stride']})"


def format_layers(rows, max_depth=None):
    """A plain-text table; `max_depth` keeps names with at most that many dots + 1 parts."""
    if max_depth is not None:
        rows = [r for r in rows if r["name"].count(".") < max_depth]
    header = ("name", "type", "output shape(s)", "params")
    table = [header] + [(r["name"], r["type"], _fmt_shapes(r["output_shapes"]) + _fmt_tokens(r.get("tokens")),
                         f"{r['params']:,}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = []
    for i, row in enumerate(table):
        lines.append("  ".join(row[j].ljust(widths[j]) for j in range(3)) + "  " + row[3].rjust(12))
        if i == 0:
            lines.append("-" * (sum(widths) + 6 + 12))
    return "\n".join(lines)
