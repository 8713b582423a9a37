"""The user-editable distillation file of the PaddleSeg tutorial.

`StudentAdaptor` / `TeacherAdaptor` name internal tensors; `prepare_distill_config()` pairs them with
losses. Both are empty by default: then only the logits are distilled, by the student config's
`distill_loss`. The same pairs can be written in the student yaml instead (a `distill:` block), which
needs no code; see README.

Example, for the tutorial's model (three convs, a reshape stored on the model, a linear):

    class StudentAdaptor(AdaptorBase):
        def mapping_layers(self):
            mapping_layers = {}
            mapping_layers['hidden_0'] = 'conv2'                       # output of a Layer
            if self.add_tensor:
                mapping_layers['hidden_1'] = self.model.reshape_out    # tensor stored in forward
            return mapping_layers

    def prepare_distill_config():
        return [
            {'feature_type': 'hidden', 's_feature_idx': 0, 't_feature_idx': 0,
             'loss_function': 'SegChannelwiseLoss', 'weight': 1.0, 'tau': 1.0},
            {'feature_type': 'hidden', 's_feature_idx': 1, 't_feature_idx': 1,
             'loss_function': 'L2Loss', 'weight': 1.0},
        ]

Any registered loss can be named in `loss_function` (see `slim.distill.losses.known_losses()`); extra
keys are the loss's arguments; `align: {type: 1x1conv}` adds a connector when channels differ.
"""
from slim.distill.adaptor import AdaptorBase


class StudentAdaptor(AdaptorBase):
    def mapping_layers(self):
        mapping_layers = {}
        # mapping_layers['hidden_0'] = 'backbone.bb_1_1'
        # if self.add_tensor:
        #     mapping_layers['hidden_1'] = self.model.some_tensor
        return mapping_layers


class TeacherAdaptor(AdaptorBase):
    def mapping_layers(self):
        mapping_layers = {}
        # mapping_layers['hidden_0'] = 'backbone.bb_1_3'
        return mapping_layers


TeatherAdaptor = TeacherAdaptor  # the tutorial's spelling


def prepare_distill_adaptor():
    """The adaptor classes, as the tutorial's train script asks for them."""
    return StudentAdaptor, TeacherAdaptor


def prepare_distill_config():
    """The list of feature pairs to distil (empty: logits only, through `distill_loss`)."""
    distill_config = []
    return distill_config
