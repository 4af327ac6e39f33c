"""distrax bijectors that distrax lacks (autoregressive, BNAF, layer scan, reversal, rotation) or runs slowly."""

from flowvi.bijectors.autoregressive import MaskedAutoregressive
from flowvi.bijectors.bnaf import BlockAutoregressive
from flowvi.bijectors.layer_scan import LayerScan
from flowvi.bijectors.orthogonal import Orthogonal
from flowvi.bijectors.reverse import Reverse
from flowvi.bijectors.spline import RationalQuadraticSpline

__all__ = ["BlockAutoregressive", "LayerScan", "MaskedAutoregressive", "Orthogonal", "RationalQuadraticSpline",
           "Reverse"]
