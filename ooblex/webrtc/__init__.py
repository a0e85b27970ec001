"""WebRTC plumbing on top of aiortc, tuned for latency: jitter buffer, tracks, ICE, DTLS, SDP checks, WHIP client."""

from .dtls import accept_rsa_peers
from .ice import allow_loopback, loopback_candidates, rtc_configuration
from .jitter import low_latency
from .sdp import SDPError, check_offer

__all__ = ["SDPError", "accept_rsa_peers", "allow_loopback", "check_offer", "loopback_candidates", "low_latency",
           "rtc_configuration"]
