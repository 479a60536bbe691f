use super::*;
use crate::frame::TxTiming;
use crate::phy::{build_data_uplink, AesKey, DataUplink, DevAddr};

fn cfg() -> RouterConfig {
    RouterConfig::parse(&json!({"msgtype": "router_config", "region": "EU868", "max_eirp": 16.0})).unwrap()
}

#[test]
fn euis_are_read_in_every_form_station_writes_and_written_with_dashes() {
    let want = Eui64::from_u64(0x0123_4567_89ab_cdef);
    for form in [
        json!("01-23-45-67-89-ab-cd-ef"),
        json!("01-23-45-67-89-AB-CD-EF"),
        json!("0123456789abcdef"),
        json!("01:23:45:67:89:ab:cd:ef"),
        json!("123:4567:89ab:cdef"),
        json!(0x0123_4567_89ab_cdef_u64),
    ] {
        assert_eq!(parse_eui(&form), Some(want), "{form}");
    }
    // ID6 with `::`.
    assert_eq!(parse_eui(&json!("::1")), Some(Eui64::from_u64(1)));
    assert_eq!(parse_eui(&json!("b827:ebff::51a6")), Some(Eui64::from_u64(0xb827_ebff_0000_51a6)));
    for bad in
        [json!("01-23"), json!("xyz"), json!("1:2:3:4:5"), json!("1::2::3"), json!(true), json!("12345:1::")]
    {
        assert_eq!(parse_eui(&bad), None, "{bad}");
    }
    assert_eq!(eui_text(want), "01-23-45-67-89-AB-CD-EF");
    assert_eq!(router_info_request(want), json!({"router": "01-23-45-67-89-AB-CD-EF"}));
}

#[test]
fn router_info_gives_a_websocket_uri_or_says_why_not() {
    assert_eq!(
        RouterInfo::parse(r#"{"router":"::1","muxs":"::0","uri":"wss://lns:6887/traffic/x"}"#).unwrap().uri,
        "wss://lns:6887/traffic/x"
    );
    for (text, why) in [
        (r#"{"router":"::1","error":"Router not provisioned"}"#, "not provisioned"),
        (r#"{"router":"::1"}"#, "no uri"),
        (r#"{"uri":"http://x"}"#, "not a ws"),
        ("[", "not JSON"),
    ] {
        let e = RouterInfo::parse(text).unwrap_err().to_string();
        assert!(e.contains(why), "{text}: {e}");
    }
}

#[test]
fn a_router_config_is_read_with_the_regions_defaults_and_an_absurd_one_is_refused_with_why() {
    let c = cfg();
    assert_eq!(c.freq_range, (863_000_000, 870_000_000));
    assert_eq!(c.dr_of(&lora(12, 125)), Some(0));
    assert_eq!(c.dr_of(&lora(7, 250)), Some(6));
    assert_eq!(c.modulation_of(5), Some(lora(7, 125)));
    assert_eq!(c.modulation_of(8), None);
    assert_eq!(c.max_eirp_dbm, 16.0);
    let full = json!({
        "msgtype": "router_config", "region": "EU863", "freq_range": [863000000, 870000000],
        "DRs": [[12,125,0],[11,125,0],[10,125,0],[9,125,0],[8,125,0],[7,125,0],[7,250,0],[0,0,0],[-1,0,0]],
        "JoinEui": [["00-00-00-00-00-00-00-00", "00-00-00-00-00-00-00-FF"]], "NetID": [0, 19],
        "max_eirp": 16.0, "hwspec": "sx1301/1", "MuxTime": 1700000000.5
    });
    let c = RouterConfig::parse(&full).unwrap();
    assert_eq!(
        (c.join_eui.clone(), c.net_id.clone(), c.mux_time),
        (vec![(0, 255)], vec![0, 19], Some(1_700_000_000.5))
    );
    for (change, why) in [
        (json!({"region": "US915"}), "region"),
        (json!({"region": null}), "no region"),
        (json!({"freq_range": [902000000, 928000000]}), "freq_range"),
        (json!({"freq_range": [869000000, 868000000]}), "freq_range"),
        (json!({"DRs": [[13,125,0]]}), "DR0"),
        (json!({"DRs": [[7,333,0]]}), "DR0"),
        (json!({"DRs": [[7,125,2]]}), "dnonly"),
        (json!({"DRs": []}), "DRs"),
        (json!({"max_eirp": 60.0}), "max_eirp"),
        (json!({"max_eirp": -1}), "max_eirp"),
        (json!({"JoinEui": [["zz", "00"]]}), "JoinEui"),
        (json!({"JoinEui": [["00-00-00-00-00-00-00-FF", "00-00-00-00-00-00-00-00"]]}), "JoinEui"),
        (json!({"NetID": [16777216]}), "NetID"),
    ] {
        let mut v = full.clone();
        for (k, x) in change.as_object().unwrap() {
            v[k] = x.clone();
        }
        let e = RouterConfig::parse(&v).unwrap_err().to_string();
        assert!(e.starts_with("router_config") && e.contains(why), "{change}: {e}");
    }
}

fn data_frame(dev_addr: u32, fcnt: u32) -> Vec<u8> {
    let up = DataUplink {
        dev_addr: DevAddr::from_u32(dev_addr),
        fcnt,
        confirmed: false,
        adr: false,
        f_port: 2,
        payload: b"hello",
    };
    build_data_uplink(&up, &AesKey([1; 16]), &AesKey([2; 16])).expect("a frame")
}

#[test]
fn an_uplink_is_an_updf_with_its_fields_its_original_receive_time_and_upinfo() {
    let phy = data_frame(0x2601_1bda, 0x1_0005);
    let mut frame = UplinkFrame::example(phy.clone(), CrcStatus::Ok);
    frame.received_at = UNIX_EPOCH + std::time::Duration::from_millis(1_765_000_000_250);
    frame.rssi = -97;
    frame.snr = 7.25;
    let ctx = UpContext { rctx: 0, xtime: xtime(3, 123_456), gpstime: 0, ref_time: 0.0 };
    let m = uplink_message(&frame, &cfg(), &ctx).expect("an updf");
    assert_eq!(m["msgtype"], "updf");
    assert_eq!(m["MHdr"], 0x40);
    assert_eq!(m["DevAddr"], 0x2601_1bda);
    assert_eq!(m["FCnt"], 5, "the 16 bits on the air");
    assert_eq!(m["FPort"], 2);
    assert_eq!(m["FOpts"], "");
    assert_eq!(m["FRMPayload"].as_str().unwrap().len(), 10);
    let mic = i32::from_le_bytes(phy[phy.len() - 4..].try_into().unwrap());
    assert_eq!(m["MIC"], mic);
    assert_eq!((m["DR"].as_u64(), m["Freq"].as_u64()), (Some(5), Some(868_100_000)));
    assert_eq!(m["upinfo"]["rxtime"].as_f64(), Some(1_765_000_000.25));
    assert_eq!(m["upinfo"]["xtime"], xtime(3, 123_456));
    assert_eq!((m["upinfo"]["rssi"].as_f64(), m["upinfo"]["snr"].as_f64()), (Some(-97.0), Some(7.25)));
    // A DevAddr with its top bit set is a negative INT32, as Station writes it.
    let m = uplink_message(&UplinkFrame::example(data_frame(0xfc00_0001, 1), CrcStatus::Ok), &cfg(), &ctx)
        .unwrap();
    assert_eq!(m["DevAddr"], 0xfc00_0001_u32 as i32);
    // A bad CRC, a data rate outside the plan: not sent.
    assert!(uplink_message(&UplinkFrame::example(phy.clone(), CrcStatus::Bad), &cfg(), &ctx).is_none());
    let mut sf7_500 = UplinkFrame::example(phy, CrcStatus::Ok);
    sf7_500.modulation = lora(7, 500);
    assert!(uplink_message(&sf7_500, &cfg(), &ctx).is_none());
}

#[test]
fn a_join_request_is_a_jreq_and_the_lns_filters_apply() {
    let mut jr = vec![0x00];
    jr.extend_from_slice(&0x70b3_d57e_d000_0001_u64.to_le_bytes());
    jr.extend_from_slice(&0x0004_a30b_001c_0530_u64.to_le_bytes());
    jr.extend_from_slice(&0x1234u16.to_le_bytes());
    jr.extend_from_slice(&[1, 2, 3, 4]);
    let ctx = UpContext { rctx: 1, xtime: 1, gpstime: 0, ref_time: 0.0 };
    let m = uplink_message(&UplinkFrame::example(jr.clone(), CrcStatus::Ok), &cfg(), &ctx).unwrap();
    assert_eq!(m["msgtype"], "jreq");
    assert_eq!(m["JoinEui"], "70-B3-D5-7E-D0-00-00-01");
    assert_eq!(m["DevEui"], "00-04-A3-0B-00-1C-05-30");
    assert_eq!(m["DevNonce"], 0x1234);
    assert_eq!(m["MIC"], i32::from_le_bytes([1, 2, 3, 4]));
    let mut filtered = cfg();
    filtered.join_eui = vec![(0, 0xff)];
    assert!(uplink_message(&UplinkFrame::example(jr, CrcStatus::Ok), &filtered, &ctx).is_none());
    // NetID 0x13 (type 0): DevAddrs 0x26...... (prefix 0, NwkID 0x13).
    filtered.net_id = vec![0x13];
    let ok = UplinkFrame::example(data_frame(0x2601_1bda, 1), CrcStatus::Ok);
    assert!(uplink_message(&ok, &filtered, &ctx).is_some());
    let other = UplinkFrame::example(data_frame(0x0201_1bda, 1), CrcStatus::Ok);
    assert!(uplink_message(&other, &filtered, &ctx).is_none());
}

#[test]
fn a_class_a_dnmsg_is_rx1_then_rx2_from_the_uplinks_xtime_and_a_forbidden_one_is_refused() {
    let d = Dnmsg::parse(&json!({
        "msgtype": "dnmsg", "DevEui": "00-04-A3-0B-00-1C-05-30", "dC": 0, "diid": 77, "pdu": "6001020304",
        "RxDelay": 1, "RX1DR": 5, "RX1Freq": 868100000, "RX2DR": 0, "RX2Freq": 869525000,
        "priority": 0, "xtime": xtime(3, 4_000_000_000), "rctx": 0, "MuxTime": 1.0
    }))
    .unwrap();
    assert_eq!(d.windows(), vec![Window::Rx1, Window::Rx2]);
    let session = |x: i64| xtime_parts(x).filter(|(s, _)| *s == 3).map(|(_, c)| c);
    let rx1 = d.to_frame(Window::Rx1, &cfg(), 9, session).unwrap();
    assert_eq!(rx1.timing, TxTiming::Counter(4_000_000_000u32.wrapping_add(1_000_000)));
    assert_eq!((rx1.frequency.0, rx1.modulation, rx1.power_dbm), (868_100_000, lora(7, 125), 16));
    let rx2 = d.to_frame(Window::Rx2, &cfg(), 9, session).unwrap();
    assert_eq!(rx2.timing, TxTiming::Counter(4_000_000_000u32.wrapping_add(2_000_000)));
    assert_eq!((rx2.frequency.0, rx2.modulation), (869_525_000, lora(12, 125)));
    // Another radio session's xtime: no window.
    let other = |x: i64| xtime_parts(x).filter(|(s, _)| *s == 4).map(|(_, c)| c);
    assert!(d.to_frame(Window::Rx1, &cfg(), 9, other).unwrap_err().to_string().contains("session"));
    // A frequency the region forbids, a DR outside the plan.
    let mut bad = d.clone();
    bad.rx1 = Some((5, 915_000_000));
    assert!(bad.to_frame(Window::Rx1, &cfg(), 9, session).unwrap_err().to_string().contains("outside"));
    bad.rx1 = Some((9, 868_100_000));
    assert!(bad.to_frame(Window::Rx1, &cfg(), 9, session).unwrap_err().to_string().contains("DR9"));
    // dntxed echoes what the LNS needs.
    let tx = dntxed_message(&d, xtime(3, 4_001_000_000), UNIX_EPOCH, 0);
    assert_eq!((tx["msgtype"].as_str(), tx["diid"].as_i64()), (Some("dntxed"), Some(77)));
    assert_eq!(tx["DevEui"], "00-04-A3-0B-00-1C-05-30");
}

#[test]
fn class_c_goes_at_once_on_rx2_and_class_b_at_its_gps_time() {
    let c = Dnmsg::parse(
        &json!({"msgtype": "dnmsg", "dC": 2, "diid": 1, "pdu": "60", "RX2DR": 0, "RX2Freq": 869525000}),
    )
    .unwrap();
    assert_eq!(c.windows(), vec![Window::Immediate]);
    assert_eq!(c.to_frame(Window::Immediate, &cfg(), 1, |_| None).unwrap().timing, TxTiming::Immediately);
    let b = Dnmsg::parse(&json!({"msgtype": "dnmsg", "dC": 1, "diid": 2, "pdu": "60", "DR": 3, "Freq": 869525000, "gpstime": 1_300_000_000_000_000i64})).unwrap();
    assert_eq!(b.windows(), vec![Window::Absolute]);
    assert_eq!(
        b.to_frame(Window::Absolute, &cfg(), 2, |_| None).unwrap().timing,
        TxTiming::GpsEpoch(1_300_000_000_000_000)
    );
}

#[test]
fn what_the_lns_sends_is_read_or_refused_by_name() {
    assert!(matches!(
        Downstream::parse(r#"{"msgtype":"router_config","region":"EU868"}"#),
        Ok(Downstream::RouterConfig(_))
    ));
    assert_eq!(
        Downstream::parse(r#"{"msgtype":"timesync","txtime":12.5,"gpstime":1300000000000000}"#).unwrap(),
        Downstream::Timesync { txtime: Some(12.5), xtime: None, gpstime: 1_300_000_000_000_000 }
    );
    for (text, kind) in [
        (r#"{"msgtype":"runcmd","command":"reboot"}"#, "runcmd"),
        (r#"{"msgtype":"rmtsh"}"#, "rmtsh"),
        (r#"{"msgtype":"dnsched"}"#, "dnsched"),
    ] {
        let d = Downstream::parse(text).unwrap();
        assert!(format!("{d:?}").to_lowercase().starts_with(kind), "{d:?}");
    }
    for (text, why) in [
        ("{", "not JSON"),
        ("{}", "no msgtype"),
        (r#"{"msgtype":"format_disk"}"#, "unknown msgtype"),
        (r#"{"msgtype":"dnmsg","diid":1,"pdu":"zz"}"#, "pdu"),
        (r#"{"msgtype":"dnmsg","diid":1,"pdu":""}"#, "pdu of 0 bytes"),
        (r#"{"msgtype":"dnmsg","diid":1,"pdu":"60","dC":7}"#, "device class"),
        (r#"{"msgtype":"dnmsg","diid":1,"pdu":"60","RxDelay":99}"#, "RxDelay"),
        (r#"{"msgtype":"dnmsg","pdu":"60"}"#, "no diid"),
        (r#"{"msgtype":"timesync","txtime":1}"#, "gpstime"),
        (r#"{"msgtype":"router_config","region":"XX"}"#, "region"),
    ] {
        let e = Downstream::parse(text).unwrap_err().to_string();
        assert!(e.contains(why), "{text}: {e}");
    }
    assert_eq!(timesync_request(1.5), json!({"msgtype": "timesync", "txtime": 1.5}));
    assert_eq!(version_message("berrygw 0.1", "rak2287", "")["protocol"], 2);
}

#[test]
fn xtime_carries_the_radio_session_and_the_counter() {
    let x = xtime(7, 0x0001_2345_6789);
    assert_eq!(xtime_parts(x), Some((7, 0x2345_6789)));
    assert_eq!(xtime_parts(-1), None);
}

/// Semtech's own test LNS sends this plan (EU863, six channels) both ways: as
/// `sx1301_conf` (radio centres and offsets) and as `upchannels`. Each alone gives the
/// same channels; a radio on another plan is told which channels differ.
#[test]
fn the_lns_channel_plan_is_read_from_sx1301_conf_or_upchannels_and_compared_with_the_radios() {
    let conf = json!([{
        "chan_FSK": {"enable": false}, "chan_Lora_std": {"enable": false},
        "chan_multiSF_0": {"enable": true, "if": -375000, "radio": 0},
        "chan_multiSF_1": {"enable": true, "if": -175000, "radio": 0},
        "chan_multiSF_2": {"enable": true, "if": 25000, "radio": 0},
        "chan_multiSF_3": {"enable": true, "if": 375000, "radio": 0},
        "chan_multiSF_4": {"enable": true, "if": -237500, "radio": 1},
        "chan_multiSF_5": {"enable": true, "if": 237500, "radio": 1},
        "chan_multiSF_6": {"enable": false}, "chan_multiSF_7": {"enable": false},
        "radio_0": {"enable": true, "freq": 868475000}, "radio_1": {"enable": true, "freq": 869287500}
    }]);
    let six = vec![868_100_000, 868_300_000, 868_500_000, 868_850_000, 869_050_000, 869_525_000];
    let up: Vec<_> = six.iter().map(|f| json!([f, 0, 5])).collect();
    for plan in [json!({"sx1301_conf": conf}), json!({"upchannels": up})] {
        let mut v = json!({"msgtype": "router_config", "region": "EU863"});
        v.as_object_mut().unwrap().extend(plan.as_object().unwrap().clone());
        let c = RouterConfig::parse(&v).unwrap();
        assert_eq!(c.upchannels.as_deref(), Some(six.as_slice()), "{plan}");
        assert_eq!(c.channel_mismatch(&six), None);
        // The sim radio's default: ChirpStack's eight EU868 channels.
        let eight = crate::sim::default_frequencies();
        let why = c.channel_mismatch(&eight).unwrap();
        assert!(why.contains("868.850, 869.050, 869.525 MHz, which the radio does not listen on"), "{why}");
        assert!(why.contains("the radio listens on 867.100"), "{why}");
    }
    let sx1301 =
        RouterConfig::parse(&json!({"msgtype": "router_config", "region": "EU863", "sx1301_conf": conf}))
            .unwrap();
    let plan = sx1301.plan.unwrap();
    assert_eq!(plan.centres, [Some(868_475_000), Some(869_287_500)], "one board: its radios' centres");
    assert_eq!((plan.multi_sf, plan.lora_std, plan.fsk), (six.clone(), vec![], vec![]));
    assert_eq!(cfg().upchannels, None);
    assert_eq!(cfg().channel_mismatch(&[868_100_000]), None, "no plan from the LNS: nothing to compare");
    for (plan, why) in [
        (json!({"upchannels": [[915000000, 0, 5]]}), "outside the band"),
        (json!({"upchannels": [["x"]]}), "not [Hz, minDR, maxDR]"),
        (
            json!({"upchannels": (0..65).map(|i| json!([863_000_000 + i * 100_000, 0, 5])).collect::<Vec<_>>()}),
            "at most 64",
        ),
        (
            json!({"sx1301_conf": [{"chan_multiSF_0": {"enable": true, "if": 0, "radio": 2}}]}),
            "radio 0 and 1",
        ),
        (
            json!({"sx1301_conf": [{"chan_multiSF_0": {"enable": true, "if": 9000000, "radio": 0}, "radio_0": {"freq": 868000000}}]}),
            "±1 MHz",
        ),
        (json!({"sx1301_conf": {"radio_0": 1}}), "not a list"),
    ] {
        let mut v = json!({"msgtype": "router_config", "region": "EU863"});
        v.as_object_mut().unwrap().extend(plan.as_object().unwrap().clone());
        let e = RouterConfig::parse(&v).unwrap_err().to_string();
        assert!(e.contains(why), "{plan}: {e}");
    }
}

/// The Things Stack's EU868 plan in `upchannels`: eight multi-SF channels, DR6 (SF7 at
/// 250 kHz) on 868.3 MHz and DR7 (FSK) on 868.8 MHz. Each channel's kind comes from its
/// data rates; the FSK channel is no LoRa channel to compare.
#[test]
fn each_upchannel_is_multi_sf_single_sf_or_fsk_by_its_data_rates() {
    let mut eight = crate::sim::default_frequencies();
    eight.sort_unstable();
    let mut up: Vec<_> = eight.iter().map(|f| json!([f, 0, 5])).collect();
    up.push(json!([868_300_000, 6, 6]));
    up.push(json!([868_800_000, 7, 7]));
    let c = RouterConfig::parse(&json!({"msgtype": "router_config", "region": "EU868", "upchannels": up}))
        .unwrap();
    let plan = c.plan.clone().unwrap();
    assert_eq!(plan.multi_sf, eight);
    assert_eq!(
        plan.lora_std,
        vec![LoraStd { frequency: 868_300_000, bandwidth: 250_000, spreading_factor: 7 }]
    );
    assert_eq!(
        plan.fsk,
        vec![FskChannel { frequency: 868_800_000, datarate: 50_000, frequency_deviation: 25_000 }]
    );
    assert_eq!(plan.centres, [None, None]);
    assert_eq!(c.upchannels.as_deref(), Some(eight.as_slice()), "868.3 MHz once; no FSK");
    assert_eq!(c.channel_mismatch(&eight), None);

    // The same as sx1301_conf, with the service and FSK channels' own fields.
    let conf = json!([{
        "radio_0": {"enable": true, "freq": 867500000}, "radio_1": {"enable": true, "freq": 868500000},
        "chan_multiSF_0": {"enable": true, "radio": 0, "if": -400000},
        "chan_Lora_std": {"enable": true, "radio": 1, "if": -200000, "bandwidth": 250000, "spread_factor": 7},
        "chan_FSK": {"enable": true, "radio": 1, "if": 300000, "datarate": 50000}
    }]);
    let c = RouterConfig::parse(&json!({"msgtype": "router_config", "region": "EU868", "sx1301_conf": conf}))
        .unwrap();
    let plan = c.plan.clone().unwrap();
    assert_eq!(
        (plan.multi_sf, plan.lora_std.len(), plan.fsk),
        (
            vec![867_100_000],
            1,
            vec![FskChannel { frequency: 868_800_000, datarate: 50_000, frequency_deviation: 25_000 }]
        )
    );
    assert_eq!(c.upchannels, Some(vec![867_100_000, 868_300_000]));
    // chan_Lora_std without its own fields, as Semtech's test LNS sends it: the plan's
    // single-SF data rate (EU868's DR6).
    let bare = json!([{"radio_0": {"freq": 868000000}, "chan_Lora_std": {"enable": true, "radio": 0, "if": 300000}}]);
    let c = RouterConfig::parse(&json!({"msgtype": "router_config", "region": "EU868", "sx1301_conf": bare}))
        .unwrap();
    assert_eq!(
        c.plan.unwrap().lora_std,
        vec![LoraStd { frequency: 868_300_000, bandwidth: 250_000, spreading_factor: 7 }]
    );

    for (plan, why) in [
        (json!({"upchannels": [[868_100_000, 5, 2]]}), "DR5..DR2 is no range"),
        (json!({"upchannels": [[868_100_000, 0, 16]]}), "DR0..DR16 is no range"),
        (
            json!({"sx1301_conf": [{"radio_0": {"freq": 868000000}, "chan_Lora_std": {"enable": true, "radio": 0, "if": 300000, "bandwidth": 300000}}]}),
            "chan_Lora_std has no valid bandwidth",
        ),
        (
            json!({"DRs": [[12, 125, 0]], "sx1301_conf": [{"radio_0": {"freq": 868000000}, "chan_Lora_std": {"enable": true, "radio": 0, "if": 300000}}]}),
            "and the DRs no single-SF uplink rate",
        ),
        (
            json!({"sx1301_conf": [{"radio_0": {"freq": 868000000}, "chan_FSK": {"enable": true, "radio": 0, "if": 300000, "datarate": 9000000}}]}),
            "chan_FSK has no valid datarate",
        ),
    ] {
        let mut v = json!({"msgtype": "router_config", "region": "EU868"});
        v.as_object_mut().unwrap().extend(plan.as_object().unwrap().clone());
        let e = RouterConfig::parse(&v).unwrap_err().to_string();
        assert!(e.contains(why), "{plan}: {e}");
    }
}
