"""Packets and traces. Header parsing has two implementations of identical behaviour: the Cython
extension `nfproof.traces._fast` (traces/_fast.pyx, parsing code in traces/_parse.pxi) and the
pure-Python reference `nfproof.traces.headers`. `parse_frame` and `scan_pcap_flow_keys` here are the
fast ones unless the extension is not built or NFPROOF_PUREPYTHON=1; `IMPLEMENTATION` says which."""
import os

from .headers import FlowKeyer, Parsed

if os.environ.get("NFPROOF_PUREPYTHON") == "1":
    from . import headers as _impl
else:
    try:
        from . import _fast as _impl
    except ImportError:  # not compiled (e.g. a source checkout without a build)
        from . import headers as _impl

parse_frame = _impl.parse_frame
scan_pcap_flow_keys = _impl.scan_pcap_flow_keys
IMPLEMENTATION = "fast" if _impl.__name__.endswith("_fast") else "fallback"

__all__ = ["FlowKeyer", "Parsed", "parse_frame", "scan_pcap_flow_keys", "IMPLEMENTATION"]
