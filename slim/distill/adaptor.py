"""Capture named internal tensors of a model without editing it.

A tensor is named either by the sublayer that produces (or receives) it, captured by a forward hook,
or, for tensors computed by plain functions, by an attribute the model stores on itself during forward
(the PaddleSeg tutorial's adaptor API):

    class StudentAdaptor(AdaptorBase):
        def mapping_layers(self):
            mapping_layers = {'hidden_0': 'conv2'}          # output of sublayer `conv2`
            if self.add_tensor:
                mapping_layers['hidden_1'] = self.model.reshape_out   # stored during forward
            return mapping_layers

A sublayer reference may also be a dict, PaddleSlim style: `{'layer': 'backbone.bb_1_1', 'io': 'input',
'idx': 0}`; `idx` picks one element when the layer takes or returns a tuple; `call: k` picks the k-th call
(from 0) of a layer that runs several times in one forward (e.g. a detection head's convolution shared by
every FPN level; without `call`, the last call wins). The special layer name `$output` means the model's own return
value.
"""
import difflib
import re

import paddle

from .errors import ConfigError, LayerNotFoundError

MODEL_OUTPUT = "$output"
_KEY_RE = re.compile(r"^(?P<type>.+)_(?P<idx>\d+)$")
LIST_LAYERS_HINT = ("List every sublayer name with its output shape: "
                    "`python tools/list_layers.py --config CONFIG.yml`, "
                    "or `slim.distill.list_layers(model, example_input)` in Python.")


def unwrap(model):
    """The user's model inside `paddle.DataParallel` (hooks and names belong to the inner model)."""
    while isinstance(model, paddle.DataParallel):
        model = model._layers
    return model


def split_mapping_key(key):
    """'hidden_0' -> ('hidden', 0). Keys must be `<feature_type>_<idx>`."""
    match = _KEY_RE.match(str(key))
    if not match:
        raise ConfigError(
            f"Mapping key {key!r} is not of the form <feature_type>_<idx> "
            f"(for example 'hidden_0' or 'backbone_feat_2').")
    return match.group("type"), int(match.group("idx"))


class LayerRef:
    """A tensor named by a sublayer: its output (default) or input, optionally one tuple element."""

    def __init__(self, layer, io="output", idx=None, call=None):
        if io not in ("output", "input"):
            raise ConfigError(f"`io` of layer {layer!r} must be 'output' or 'input', got {io!r}")
        if idx is not None and (isinstance(idx, bool) or not isinstance(idx, int)):
            raise ConfigError(f"`idx` of layer {layer!r} must be an integer or null, got {idx!r}")
        if call is not None and (isinstance(call, bool) or not isinstance(call, int) or call < 0):
            raise ConfigError(f"`call` of layer {layer!r} must be an integer >= 0 or null, got {call!r}")
        self.layer, self.io, self.idx, self.call = str(layer), io, idx, call

    @classmethod
    def parse(cls, value):
        if isinstance(value, LayerRef):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict):
            unknown = set(value) - {"layer", "io", "idx", "call"}
            if "layer" not in value or unknown:
                raise ConfigError(
                    f"A layer reference is a name or {{layer: NAME, io: output|input, idx: N, call: K}}, "
                    f"got {dict(value)!r}")
            return cls(value["layer"], value.get("io", "output"), value.get("idx"), value.get("call"))
        raise ConfigError(f"A layer reference must be a sublayer name or a dict, got {value!r}")

    @property
    def is_model_output(self):
        return self.layer == MODEL_OUTPUT

    def describe(self):
        text = "the model output" if self.is_model_output else repr(self.layer)
        if self.io == "input":
            text = f"the input of {text}"
        if self.call is not None:
            text += f" (call {self.call})"
        if self.idx is not None:
            text += f"[{self.idx}]"
        return text

    def __eq__(self, other):
        return isinstance(other, LayerRef) and (self.layer, self.io, self.idx, self.call) == (
            other.layer, other.io, other.idx, other.call)

    def __hash__(self):
        return hash((self.layer, self.io, self.idx, self.call))

    def __repr__(self):
        extra = f", call={self.call!r}" if self.call is not None else ""
        return f"LayerRef({self.layer!r}, io={self.io!r}, idx={self.idx!r}{extra})"


def select(value, ref):
    """Pick the tensor `ref` names out of a layer's input tuple or (possibly tuple) output."""
    if ref.idx is not None:
        if not isinstance(value, (list, tuple)):
            if ref.idx == 0:
                return value
            raise ConfigError(f"{ref.describe()}: idx {ref.idx} given but the value is a single tensor")
        if not -len(value) <= ref.idx < len(value):
            raise ConfigError(
                f"{ref.describe()}: idx {ref.idx} is out of range for a tuple of {len(value)} items")
        return value[ref.idx]
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return value[0]
        raise ConfigError(
            f"{ref.describe()} is a tuple of {len(value)} items; say which one with `idx` "
            f"(e.g. {{layer: {ref.layer}, io: {ref.io}, idx: 0}}).")
    return value


def find_sublayer(model, name):
    """The sublayer called `name` in `named_sublayers()`, or a LayerNotFoundError with close names."""
    model = unwrap(model)
    layers = dict(model.named_sublayers())
    if name.startswith("_layers."):
        name = name[len("_layers."):]
    if name in layers:
        return layers[name]
    close = difflib.get_close_matches(name, list(layers), n=5, cutoff=0.4)
    closest = f" Closest names: {', '.join(close)}." if close else ""
    raise LayerNotFoundError(
        f"{type(model).__name__} has no sublayer named {name!r}.{closest} {LIST_LAYERS_HINT}")


class AdaptorBase:
    """Base of the tutorial's StudentAdaptor / TeacherAdaptor: subclasses implement `mapping_layers()`.

    `mapping_layers()` is called twice: before any forward with `self.add_tensor = False` (values are
    sublayer names to hook) and after each forward with `self.add_tensor = True` (values may also be
    tensors the model stored on itself).
    """

    def __init__(self, model, add_tensor=False):
        self.model = unwrap(model)
        self.add_tensor = add_tensor

    def mapping_layers(self):
        raise NotImplementedError(
            f"{type(self).__name__} must implement mapping_layers() returning "
            "{'<feature_type>_<idx>': 'sublayer.name', ...}")

    def layer_mapping(self):
        """The entries that name sublayers, read before any forward."""
        self.add_tensor = False
        try:
            mapping = self.mapping_layers() or {}
        finally:
            self.add_tensor = False
        for key in mapping:
            split_mapping_key(key)
        return {k: LayerRef.parse(v) for k, v in mapping.items() if not isinstance(v, paddle.Tensor)}

    def stored_tensors(self):
        """The entries that are tensors stored by the model during the forward that just ran."""
        self.add_tensor = True
        try:
            mapping = self.mapping_layers() or {}
        except AttributeError as e:
            raise ConfigError(
                f"{type(self).__name__}.mapping_layers() failed after the forward pass: {e}. A tensor "
                f"named inside `if self.add_tensor:` must be stored on the model during forward "
                f"(e.g. `self.reshape_out = paddle.reshape(...)`).") from e
        finally:
            self.add_tensor = False
        return {k: v for k, v in mapping.items() if isinstance(v, paddle.Tensor)}


class FeatureRecorder:
    """Registers hooks for a set of LayerRefs on one model and keeps what they saw in the last forward.

    When a hooked layer runs several times in one forward, the last call wins, unless the reference
    names a call (`call: k`).
    """

    def __init__(self, model, refs):
        self.model = unwrap(model)
        self.refs = list(dict.fromkeys(r for r in refs if not r.is_model_output))
        self.values = {}
        self.calls = {}  # ref -> every value it saw in this forward, for refs that name a call
        self._handles = []
        for ref in self.refs:
            layer = find_sublayer(self.model, ref.layer)
            if ref.io == "output":
                handle = layer.register_forward_post_hook(self._output_hook(ref))
            else:
                handle = layer.register_forward_pre_hook(self._input_hook(ref))
            self._handles.append(handle)

    def _keep(self, ref, value):
        self.values[ref] = value
        if ref.call is not None:
            self.calls.setdefault(ref, []).append(value)

    def _output_hook(self, ref):
        def hook(layer, inputs, output):
            self._keep(ref, output)

        return hook

    def _input_hook(self, ref):
        def hook(layer, inputs):
            self._keep(ref, inputs)

        return hook

    def clear(self):
        self.values = {}
        self.calls = {}

    def get(self, ref, model_output=None):
        if ref.is_model_output:
            return select(model_output, ref)
        if ref not in self.values:
            raise ConfigError(
                f"Layer {ref.layer!r} of {type(self.model).__name__} did not run during the forward "
                f"pass, so its {ref.io} could not be captured. Pick a layer that the forward uses. "
                f"{LIST_LAYERS_HINT}")
        if ref.call is not None:
            seen = self.calls.get(ref, [])
            if ref.call >= len(seen):
                raise ConfigError(f"{ref.describe()}: layer {ref.layer!r} ran {len(seen)} time(s) in this forward, "
                                  f"so it has no call {ref.call} (calls count from 0).")
            return select(seen[ref.call], ref)
        return select(self.values[ref], ref)

    def remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.values = {}
        self.calls = {}
