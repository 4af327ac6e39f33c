"""distrax bijectors that distrax itself lacks: autoregressive, BNAF, layer scan, reversal."""

from flowvi.bijectors.autoregressive import MaskedAutoregressive
from flowvi.bijectors.bnaf import BlockAutoregressive
from flowvi.bijectors.layer_scan import LayerScan
from flowvi.bijectors.reverse import Reverse

__all__ = ["BlockAutoregressive", "LayerScan", "MaskedAutoregressive", "Reverse"]
