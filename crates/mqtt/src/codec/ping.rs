//! PINGREQ and PINGRESP (MQTT 5 sections 3.12 and 3.13; 3.1.1 sections
//! 3.12 and 3.13): a fixed header with flags 0000 and a Remaining Length of
//! 0, nothing else. They have no struct: [`super::Packet::PingReq`] and
//! [`super::Packet::PingResp`] say it all.

use super::PacketType;
use super::error::DecodeError;
use super::wire::Reader;

/// Checks that a PINGREQ or PINGRESP has no body.
pub(crate) fn read(r: &Reader, kind: PacketType) -> Result<(), DecodeError> {
    r.finish(kind.name())
}
