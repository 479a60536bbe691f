//! `decode`: local decoding on one core, no broker: a JavaScript codec and Cayenne LPP in
//! decodes/s, and the whole path of one uplink of a registered device in µs.

use super::*;

/// The shipped river level codec (TTN contract, modern syntax): the "typical JS codec".
const RIVER_LEVEL_JS: &str = include_str!("../../../plugins/codecs/examples-js/river_level.js");

/// CPU time of `f` run `n` times, per call.
pub(super) fn per_call(n: u64, mut f: impl FnMut(u64) -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let before = sample();
    let start = Instant::now();
    for i in 0..n {
        f(i)?;
    }
    // Ticks are 10 ms: fall back on wall time (one busy thread) when the run is that short.
    let cpu = sample().cpu.saturating_sub(before.cpu).max(start.elapsed());
    Ok(cpu / u32::try_from(n.max(1)).unwrap_or(u32::MAX))
}

/// `decode`: codecs and the whole local decoding path on one core.
pub(super) fn decode(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    use berrygw_codecs::{Codec, Limits, UplinkInput};
    use berrygw_lora::phy::{build_data_uplink, AesKey, DataUplink, DevAddr};

    use crate::decode::engine::{codec_limits, Codecs, Engine, Outcome};
    use crate::decode::registry::Registry;
    use crate::decode::sessions::SessionStore;

    let n = args.uplinks;
    let variables = Default::default();
    let river = [0x00, 0x8e, 0x00, 0x73, 0x0e, 0x10];
    let now = std::time::SystemTime::now();
    let mut js = Codec::javascript("river_level.js", RIVER_LEVEL_JS, Limits::default())?;
    let js_call = per_call(n, |_| {
        let input =
            UplinkInput { bytes: &river, f_port: 2, recv_time: now, variables: &variables, device: "sonde" };
        js.decode(&input).map(drop).map_err(anyhow::Error::from)
    })?;
    // Temperature, humidity and GPS on three channels.
    let lpp_payload = [
        0x01, 0x67, 0x01, 0x10, 0x02, 0x68, 0x50, 0x03, 0x88, 0x06, 0x76, 0x5f, 0xf2, 0x96, 0x0a, 0x00, 0x03,
        0xe8,
    ];
    let mut lpp = Codec::cayenne_lpp();
    let lpp_call = per_call(n * 10, |_| {
        let input = UplinkInput {
            bytes: &lpp_payload,
            f_port: 1,
            recv_time: now,
            variables: &variables,
            device: "lpp",
        };
        lpp.decode(&input).map(drop).map_err(anyhow::Error::from)
    })?;

    // The whole path, through the engine the daemon runs, codec file and all.
    std::fs::write(args.dir.join("river_level.js"), RIVER_LEVEL_JS)?;
    let (nwk, app) = (AesKey([0x2b; 16]), AesKey([0x7e; 16]));
    let registry_text = format!(
        "[[device]]\nname = \"sonde\"\ndev_eui = \"70b3d57ed0001002\"\ncodec = \"river_level.js\"\n\
         abp = {{ dev_addr = \"26011002\", nwk_s_key = \"{}\", app_s_key = \"{}\" }}\n",
        nwk.to_hex(),
        app.to_hex()
    );
    let registry =
        Registry::parse(&args.dir.join("devices.toml"), &registry_text, std::slice::from_ref(&args.dir))?;
    let codecs = Codecs::build(&registry, &codec_limits(50, 8 * 1024))?;
    let (store, sessions) = SessionStore::open(&args.dir.join("sessions.sqlite"))?;
    let topics = crate::events::AppTopics::new("berrygw", "0016c001ffbe0001");
    let mut engine = Engine::new("0016c001ffbe0001".into(), Some(topics), registry, codecs, store, sessions);
    let frames: Vec<UplinkFrame> = (0..n)
        .map(|i| {
            let up = DataUplink {
                dev_addr: DevAddr::from_u32(0x2601_1002),
                fcnt: i as u32,
                confirmed: false,
                adr: true,
                f_port: 2,
                payload: &river,
            };
            build_data_uplink(&up, &nwk, &app).map(|phy| UplinkFrame::example(phy, CrcStatus::Ok))
        })
        .collect::<Result<_, _>>()?;
    let full = per_call(n, |i| match engine.uplink(&frames[i as usize], i) {
        Outcome::Reading { codec_failure: None, .. } => Ok(()),
        other => bail!("frame {i} not decoded: {other:?}"),
    })?;
    engine.flush();
    let per_s = |d: Duration| (1.0 / d.as_secs_f64()).round();
    Ok(serde_json::json!({
        "phase": "decode",
        "js_codec": "river_level.js",
        "js_decodes_per_s": per_s(js_call),
        "js_us_per_decode": js_call.as_secs_f64() * 1e6,
        "lpp_decodes_per_s": per_s(lpp_call),
        "lpp_ns_per_decode": lpp_call.as_secs_f64() * 1e9,
        "full_path_us_per_uplink": full.as_secs_f64() * 1e6,
        "uplinks": n,
    }))
}
