"""Packet protection of 1-RTT packets for the fast path (``fastpath.py``), in one call instead of six.

aioquic protects a packet through ``CryptoPair`` -> ``CryptoContext`` -> ``AEAD`` / ``HeaderProtection``,
with a copy of the packet into a ``bytearray`` and back on each side. These functions do the same
operations (AES-GCM payload protection, AES header protection, RFC 9001 sections 5.3 and 5.4) for a
short-header packet in the current key phase, and return None for anything else (ChaCha20, a key
update under way or asked for, keys not available, a packet too short to sample): the caller then
uses aioquic's code. ``fastpath.compatible()`` checks that aioquic's functions are the ones these
mirror.
"""

from __future__ import annotations

from aioquic._crypto import CryptoError
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import decode_packet_number
from cryptography.exceptions import InvalidTag

SAMPLE_LENGTH = 16
PACKET_NUMBER_LENGTH_MAX = 4
NONCE_LENGTH = 12


def decrypt_one_rtt(
    crypto: CryptoPair, packet: bytes, pn_offset: int, expected_packet_number: int
) -> tuple[bytes, bytes, int] | None:
    """``crypto.decrypt_packet(packet, pn_offset, expected_packet_number)`` for a short-header packet in
    the current key phase: (plain header, payload, packet number); raises ``CryptoError`` when the
    payload does not authenticate. None: not that case, use aioquic's."""
    recv = crypto.recv
    aead = recv.aead
    hp = recv.hp
    if aead is None or hp is None or hp._is_chacha20:
        return None
    sample_offset = pn_offset + PACKET_NUMBER_LENGTH_MAX
    if sample_offset + SAMPLE_LENGTH > len(packet):
        return None
    mask = hp._encryptor.update(packet[sample_offset : sample_offset + SAMPLE_LENGTH])
    first = packet[0] ^ (mask[0] & 0x1F)
    if (first & 4) >> 2 != recv.key_phase:
        return None  # the peer updated its keys: aioquic's code follows
    pn_length = (first & 0x03) + 1
    header_end = pn_offset + pn_length
    truncated = int.from_bytes(packet[pn_offset:header_end], "big") ^ int.from_bytes(mask[1 : 1 + pn_length], "big")
    plain_header = bytes((first,)) + packet[1:pn_offset] + truncated.to_bytes(pn_length, "big")
    packet_number = decode_packet_number(truncated, pn_length * 8, expected_packet_number)
    nonce = (aead._iv ^ packet_number).to_bytes(NONCE_LENGTH, "big")
    try:
        payload = aead._aead.decrypt(nonce, packet[header_end:], plain_header)
    except InvalidTag as exc:
        raise CryptoError(str(exc)) from exc
    return plain_header, payload, packet_number


def encrypt_one_rtt(crypto: CryptoPair, plain_header: bytes, plain_payload: bytes, packet_number: int) -> bytes | None:
    """``crypto.encrypt_packet(plain_header, plain_payload, packet_number)`` for a short-header packet
    when no key update is asked for. None: not that case, use aioquic's."""
    if crypto._update_key_requested:
        return None
    send = crypto.send
    aead = send.aead
    hp = send.hp
    if aead is None or hp is None or hp._is_chacha20:
        return None
    nonce = (aead._iv ^ packet_number).to_bytes(NONCE_LENGTH, "big")
    protected = aead._aead.encrypt(nonce, plain_payload, plain_header)
    first = plain_header[0]
    pn_length = (first & 0x03) + 1
    pn_offset = len(plain_header) - pn_length
    sample_offset = PACKET_NUMBER_LENGTH_MAX - pn_length
    mask = hp._encryptor.update(protected[sample_offset : sample_offset + SAMPLE_LENGTH])
    pn = int.from_bytes(plain_header[pn_offset:], "big") ^ int.from_bytes(mask[1 : 1 + pn_length], "big")
    return (
        bytes((first ^ (mask[0] & 0x1F),))
        + plain_header[1:pn_offset]
        + pn.to_bytes(pn_length, "big")
        + protected
    )
