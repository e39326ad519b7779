"""Pure-Python twin of runtime/fast.pyx: identical behaviour, chosen when the extension is absent
or NFPROOF_PUREPYTHON=1. Header parsing is nfproof.traces.headers."""
from nfproof.traces import headers


def flow_key(frame, linktype=1, wirelen=None):
    """Flow key of a frame, as nfproof.traces.headers documents it (None for non-IP)."""
    frame = bytes(frame)
    return headers.parse_frame(linktype, frame, len(frame) if wirelen is None else wirelen).flow_key


def parse_frame(linktype, frame, wirelen=None):
    """The full Parsed record of a frame (nfproof.traces.headers.parse_frame)."""
    frame = bytes(frame)
    return headers.parse_frame(linktype, frame, len(frame) if wirelen is None else wirelen)
