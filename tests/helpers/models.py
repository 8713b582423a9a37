"""Small models used by the engine tests."""
import paddle
import paddle.nn as nn


class TutorialModel(nn.Layer):
    """The PaddleSeg tutorial's example: three convs, a reshape stored on the model, a linear."""

    def __init__(self, channels=3):
        super().__init__()
        self.conv1 = nn.Conv2D(3, channels, 3, padding=1)
        self.conv2 = nn.Conv2D(channels, channels, 3, padding=1)
        self.conv3 = nn.Conv2D(channels, 3, 3, padding=1)
        self.fc = nn.Linear(3072, 10)

    def forward(self, x):
        conv1_out = self.conv1(x)
        conv2_out = self.conv2(conv1_out)
        conv3_out = self.conv3(conv2_out)
        self.reshape_out = paddle.reshape(conv3_out, shape=[x.shape[0], -1])
        return self.fc(self.reshape_out)


class TwoStage(nn.Layer):
    """Conv-BN stages of configurable width, with a block that returns a tuple."""

    def __init__(self, width=8, num_classes=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2D(3, width, 3, padding=1), nn.BatchNorm2D(width), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2D(width, width * 2, 3, stride=2, padding=1), nn.ReLU())
        self.split = Split()
        self.head = nn.Conv2D(width * 2, num_classes, 1)

    def forward(self, x):
        x = self.stem(x)
        x = self.stage1(x)
        a, b = self.split(x)
        return [self.head(a + b)]


class Split(nn.Layer):
    def forward(self, x):
        return x * 0.5, x * 0.5
