//! What an LNS (or anyone in the path of a ws:// link) sends the Basics Station sink's
//! WebSocket client: frames of any shape, fragmented or not, in any cut. Never a panic,
//! never a message over the size limit; each message a Station message is then read from.
#![no_main]

use berrygw::sink::basic_station::ws::{Message, Reader, MAX_MESSAGE_BYTES};
use berrygw_lora::station::Downstream;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = Reader::default();
    // Fed in two cuts, as a socket may deliver it.
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    for part in [&data[..cut], &data[cut..]] {
        reader.push(part);
        loop {
            match reader.next_message() {
                Ok(Some(Message::Text(text))) => {
                    assert!(text.len() <= MAX_MESSAGE_BYTES);
                    let _ = Downstream::parse(&text);
                }
                Ok(Some(Message::Binary(bytes))) => assert!(bytes.len() <= MAX_MESSAGE_BYTES),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
});
