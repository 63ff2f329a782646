"""Sampling and the cached decode loop."""

from tfzoo.generation.beam_search import beam_search, validate_beam_search
from tfzoo.generation.decoding import decode_loop, left_pad
from tfzoo.generation.sampling import (
    filter_top_k,
    filter_top_p,
    next_token,
    sampler,
    tensor_sampler,
    validate_sampling,
)

__all__ = [
    "beam_search",
    "decode_loop",
    "filter_top_k",
    "filter_top_p",
    "left_pad",
    "next_token",
    "sampler",
    "tensor_sampler",
    "validate_beam_search",
    "validate_sampling",
]
