//! The `basic_station` sink (issue 16): LoRa Basics Station's LNS protocol from the journal.
//! Built so far: the protocol codec (`berrygw_lora::station`), a stored uplink read back as
//! its frame (`sink::chirpstack::frame_of_record`) and, here, when a record sent to the LNS
//! may leave the journal (`proof`). Not built yet: the WebSocket connection, discovery,
//! CUPS, downlinks through the radio, the configuration section.

pub mod proof;
