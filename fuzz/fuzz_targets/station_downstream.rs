//! What an LNS sends a Basics Station gateway, over arbitrary bytes: `Downstream::parse` as
//! the sink runs it, then for a `dnmsg` every window turned into a frame against a plan
//! (any xtime, DR, frequency, delay), and a `router_config` used to classify uplinks.
//! Nothing may panic.
#![no_main]

use berrygw_lora::station::{xtime_parts, Downstream, RouterConfig, UpContext};
use berrygw_lora::{CrcStatus, UplinkFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let plan = serde_json::json!({"msgtype": "router_config", "region": "EU868"});
    let Ok(cfg) = RouterConfig::parse(&plan) else { return };
    match Downstream::parse(text) {
        Ok(Downstream::Dnmsg(d)) => {
            for w in d.windows() {
                let _ = d.to_frame(w, &cfg, 1, |x| xtime_parts(x).map(|(_, c)| c));
            }
        }
        Ok(Downstream::RouterConfig(c)) => {
            let ctx = UpContext { rctx: 0, xtime: 0, gpstime: 0, ref_time: 0.0 };
            let _ = berrygw_lora::station::uplink_message(&UplinkFrame::example(bytes.to_vec(), CrcStatus::Ok), &c, &ctx);
        }
        _ => {}
    }
});
