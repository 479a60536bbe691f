//! Tests of the GWMP codec: PUSH_DATA parsed (a bad `rxpk` refused alone), `rxpk` and
//! `txpk` translated to and from our frame types (LoRa and FSK, every downlink timing,
//! round trips), implausible fields and times refused or replaced, the TX_ACK error
//! names both ways, hostile datagrams answered with errors and never a panic, and the
//! time formats written.

use super::*;

fn lora(sf: u8) -> Modulation {
    Modulation::Lora { spreading_factor: sf, bandwidth: 125_000, code_rate: CodeRate::Cr4_5 }
}

fn push_data(json: &str) -> Vec<u8> {
    let mut d = vec![2, 0x12, 0x34, 0, 0xaa, 0x55, 0x5a, 0, 0, 0, 0, 1];
    d.extend_from_slice(json.as_bytes());
    d
}

#[test]
fn push_data_parses_and_bad_base64_refuses_only_its_rxpk() {
    let d = push_data(
        r#"{"rxpk":[{"time":"2013-03-31T16:21:17.528002Z","tmst":3512348611,"chan":2,"rfch":0,"freq":866.349812,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/6","rssi":-35,"lsnr":5.1,"size":32,"data":"-DS4CGaDCdG+48eJNM3Vai-zDpsR71Pn9CPA9uCON84"}]}"#,
    );
    // '-' is not in the standard base64 alphabet: the datagram parses, this rxpk is refused.
    let dg = Datagram::parse(&d).expect("valid datagram");
    assert_eq!((dg.version, dg.token), (2, 0x1234));
    let Packet::PushData { gateway_id, rxpk, stat } = dg.packet else { panic!("not PUSH_DATA") };
    assert_eq!(gateway_id.to_string(), "aa555a0000000001");
    assert!(stat.is_none());
    let err = rxpk[0].to_uplink(SystemTime::now()).expect_err("bad base64");
    assert_eq!(err.cause(), "base64");
}

#[test]
fn rxpk_becomes_uplink_with_every_field() {
    let now = SystemTime::now();
    let time = rfc3339_micros(now - Duration::from_secs(3)).expect("writable");
    let json = format!(
        r#"{{"rxpk":[{{"time":"{time}","tmst":3512348611,"chan":2,"rfch":1,"brd":1,"freq":868.3,"stat":-1,"modu":"LORA","datr":"SF9BW125","codr":"4/6","rssi":-101,"rssis":-104,"lsnr":-3.5,"size":3,"data":"AQID"}}]}}"#
    );
    let Packet::PushData { rxpk, .. } = Datagram::parse(&push_data(&json)).expect("parse").packet else {
        panic!("not PUSH_DATA")
    };
    let (f, when) = rxpk[0].to_uplink(now).expect("valid rxpk");
    assert_eq!(when, RxTime::Reported);
    assert_eq!(f.phy_payload, vec![1, 2, 3]);
    assert_eq!(f.frequency, Frequency(868_300_000));
    assert_eq!(
        f.modulation,
        Modulation::Lora { spreading_factor: 9, bandwidth: 125_000, code_rate: CodeRate::Cr4_6 }
    );
    assert_eq!((f.rssi, f.snr, f.crc), (-101, -3.5, CrcStatus::Bad));
    assert_eq!((f.channel, f.rf_chain, f.board, f.counter_us), (2, 1, 1, 3_512_348_611));
    assert_eq!(rfc3339_micros(f.received_at), Some(time));
}

#[test]
fn multi_antenna_rxpk_uses_the_strongest_antenna() {
    let json = r#"{"rxpk":[{"jver":2,"tmst":1,"freq":868.5,"stat":1,"modu":"LORA","datr":"SF12BW125","codr":"4/5","rsig":[{"ant":0,"chan":7,"rssic":-110,"lsnr":-8.0},{"ant":1,"chan":7,"rssic":-103,"lsnr":7.8}],"size":1,"data":"QA=="}]}"#;
    let Packet::PushData { rxpk, .. } = Datagram::parse(&push_data(json)).expect("parse").packet else {
        panic!("not PUSH_DATA")
    };
    let now = SystemTime::now();
    let (f, when) = rxpk[0].to_uplink(now).expect("valid");
    assert_eq!((f.rssi, f.snr, f.channel), (-103, 7.8, 7));
    assert_eq!((when, f.received_at), (RxTime::Absent, now));
}

#[test]
fn fsk_rxpk_and_txpk_carry_the_bit_rate() {
    let json = r#"{"rxpk":[{"tmst":1,"freq":868.8,"stat":1,"modu":"FSK","datr":50000,"rssi":-70,"size":2,"data":"AAE="}]}"#;
    let Packet::PushData { rxpk, .. } = Datagram::parse(&push_data(json)).expect("parse").packet else {
        panic!("not PUSH_DATA")
    };
    let (f, _) = rxpk[0].to_uplink(SystemTime::now()).expect("valid");
    assert_eq!(f.modulation, Modulation::Fsk { datarate: 50_000, frequency_deviation: 0 });

    let down = DownlinkFrame {
        downlink_id: 1,
        phy_payload: vec![9; 4],
        frequency: Frequency(868_800_000),
        modulation: Modulation::Fsk { datarate: 50_000, frequency_deviation: 25_000 },
        power_dbm: 27,
        timing: TxTiming::Immediately,
        invert_iq: false,
        board: 0,
        antenna: 0,
    };
    let txpk = TxPk::from_downlink(&down);
    assert_eq!((txpk.datr.clone(), txpk.fdev), (Datr::Fsk(50_000), Some(25_000)));
    assert_eq!(txpk.to_downlink(1).expect("round trip"), down);
}

#[test]
fn implausible_rxpk_fields_are_refused_by_name() {
    let base = r#"{"tmst":1,"freq":868.1,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-80,"lsnr":5.0,"size":1,"data":"QA=="}"#;
    let ok: RxPk = serde_json::from_str(base).expect("base");
    assert!(ok.to_uplink(SystemTime::now()).is_ok());
    type Spoil = fn(&mut RxPk);
    let cases: [(&str, Spoil); 11] = [
        ("freq", |r| r.freq = 86810.0),
        ("freq", |r| r.freq = f64::NAN),
        ("rssi", |r| r.rssi = Some(-3000)),
        ("lsnr", |r| r.lsnr = Some(400.0)),
        ("lsnr", |r| r.lsnr = None),
        ("stat", |r| r.stat = 7),
        ("datr", |r| r.datr = Datr::Lora("SF13BW125".into())),
        ("codr", |r| r.codr = Some("5/4".into())),
        ("size", |r| r.size = 2),
        ("chan", |r| r.chan = 300),
        ("modu", |r| r.modu = "LR-FHSS".into()),
    ];
    for (field, spoil) in cases {
        let mut r = ok.clone();
        spoil(&mut r);
        match r.to_uplink(SystemTime::now()) {
            Err(CodecError::Field { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected a field error, got {other:?}"),
        }
    }
    let mut r = ok.clone();
    r.data = "A".repeat(400);
    assert_eq!(r.to_uplink(SystemTime::now()).expect_err("too long").cause(), "field");
}

#[test]
fn implausible_time_is_replaced_by_ours() {
    let mut r: RxPk = serde_json::from_str(
        r#"{"time":"1970-01-01T00:00:01.000000Z","tmst":1,"freq":868.1,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-80,"lsnr":5.0,"size":0,"data":""}"#,
    )
    .expect("parse");
    let now = SystemTime::now();
    assert_eq!(r.to_uplink(now).expect("valid").1, RxTime::Replaced);
    r.time = Some("yesterday-ish".into());
    assert_eq!(r.to_uplink(now).expect("valid").1, RxTime::Replaced);
    r.time = Some(rfc3339_micros(now).expect("writable").trim_end_matches('Z').to_string());
    assert_eq!(r.to_uplink(now).expect("valid").1, RxTime::Reported, "no zone means UTC");
}

#[test]
fn uplink_round_trips_through_rxpk() {
    let mut f = UplinkFrame::example(vec![0x40, 1, 2, 3, 4, 5], CrcStatus::Ok);
    (f.rssi, f.snr, f.channel, f.rf_chain, f.counter_us) = (-97, -7.25, 5, 1, 4_000_000_000);
    f.frequency = Frequency(867_850_000);
    f.modulation = lora(12);
    let json = serde_json::to_string(&RxPk::from_uplink(&f)).expect("json");
    let back: RxPk = serde_json::from_str(&json).expect("parse");
    let (g, when) = back.to_uplink(SystemTime::now()).expect("valid");
    assert_eq!(when, RxTime::Reported);
    // Times travel with µs precision.
    let truncated = UNIX_EPOCH
        + Duration::from_micros(
            f.received_at.duration_since(UNIX_EPOCH).expect("after 1970").as_micros() as u64
        );
    assert_eq!(g, UplinkFrame { received_at: truncated, ..f });
    assert!(json.contains(r#""datr":"SF12BW125""#) && json.contains(r#""freq":867.85"#), "{json}");
}

#[test]
fn downlink_round_trips_through_pull_resp_for_each_timing() {
    for timing in
        [TxTiming::Immediately, TxTiming::Counter(1_234_567), TxTiming::GpsEpoch(1_400_000_000_123_000)]
    {
        let d = DownlinkFrame {
            downlink_id: 77,
            phy_payload: vec![0x60, 1, 2, 3],
            frequency: Frequency(869_525_000),
            modulation: lora(9),
            power_dbm: 14,
            timing,
            invert_iq: true,
            board: 0,
            antenna: 1,
        };
        let dg = Datagram {
            version: PROTOCOL_V2,
            token: 9,
            packet: Packet::PullResp { txpk: TxPk::from_downlink(&d) },
        };
        let bytes = dg.encode().expect("encode");
        assert_eq!(&bytes[..4], &[2, 0, 9, 3]);
        let back = Datagram::parse(&bytes).expect("parse");
        assert_eq!(back, dg);
        let Packet::PullResp { txpk } = back.packet else { panic!("not PULL_RESP") };
        assert_eq!(txpk.to_downlink(77).expect("valid"), d);
    }
}

#[test]
fn txpk_without_timing_or_power_is_refused() {
    let txpk: TxPk = serde_json::from_str(
        r#"{"freq":869.525,"rfch":0,"powe":14,"modu":"LORA","datr":"SF9BW125","codr":"4/5","ipol":true,"size":1,"data":"QA"}"#,
    )
    .expect("parse");
    assert!(matches!(txpk.to_downlink(1), Err(CodecError::Field { field: "imme", .. })));
    let txpk = TxPk { tmst: Some(5), powe: None, ..txpk };
    assert!(matches!(txpk.to_downlink(1), Err(CodecError::Field { field: "powe", .. })));
    let txpk = TxPk { powe: Some(14), ..txpk };
    assert_eq!(txpk.to_downlink(1).expect("unpadded base64 is fine").phy_payload, vec![0x40]);
}

#[test]
fn tx_ack_names_map_both_ways() {
    for (status, name) in TX_STATUS_NAMES {
        let ack = TxPkAck::from_status(status);
        assert_eq!(ack.error.as_deref(), Some(name));
        assert_eq!(ack.status(), status);
    }
    let parse = |json: &[u8]| {
        let mut d = vec![2, 0, 7, 5, 1, 2, 3, 4, 5, 6, 7, 8];
        d.extend_from_slice(json);
        match Datagram::parse(&d).expect("parse").packet {
            Packet::TxAck { ack, .. } => ack.status(),
            other => panic!("not TX_ACK: {other:?}"),
        }
    };
    assert_eq!(parse(b""), TxStatus::Ok, "empty TX_ACK means no error");
    assert_eq!(parse(b"\0"), TxStatus::Ok);
    assert_eq!(parse(br#"{"txpk_ack":{"error":"TOO_LATE"}}"#), TxStatus::TooLate);
    assert_eq!(parse(b"{\"txpk_ack\":{\"error\":\"COLLISION_BEACON\"}}\0"), TxStatus::CollisionBeacon);
    assert_eq!(parse(br#"{"txpk_ack":{"warn":"TX_POWER","value":27}}"#), TxStatus::Ok);
    assert_eq!(parse(br#"{"txpk_ack":{"error":"SEND_LBT"}}"#), TxStatus::InternalError);
}

#[test]
fn garbage_datagrams_are_errors_not_panics() {
    let cases: [(&[u8], &str); 8] = [
        (b"", "truncated"),
        (&[2, 0, 1], "truncated"),
        (&[1, 0, 1, 9], "identifier"),
        (&[3, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8], "version"),
        (&[2, 0, 1, 0, 1, 2, 3], "truncated"),
        (&[2, 0, 1, 2, 1, 2, 3, 4, 5, 6, 7], "truncated"),
        (b"\x02\x00\x01\x00\x01\x02\x03\x04\x05\x06\x07\x08{\"rxpk\":[{", "json"),
        (b"\x02\x00\x01\x03[1,2]", "json"),
    ];
    for (bytes, cause) in cases {
        assert_eq!(Datagram::parse(bytes).expect_err("garbage").cause(), cause, "{bytes:?}");
    }
    // Every prefix of a valid datagram, and some noise, parse or fail without panicking.
    let valid = push_data(
        r#"{"rxpk":[{"tmst":1,"freq":868.1,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-80,"lsnr":5.0,"size":1,"data":"QA=="}]}"#,
    );
    for end in 0..valid.len() {
        let _ = Datagram::parse(&valid[..end]);
    }
    let mut x: u32 = 0x1234_5678;
    for len in 0..200usize {
        let noise: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let _ = Datagram::parse(&noise);
    }
}

#[test]
fn times_beyond_year_9999_are_not_written_and_do_not_panic() {
    // chrono's `From<SystemTime>` panics here ("No such local time"): 1e13 s is year ~318857.
    let far = UNIX_EPOCH + Duration::from_secs(10_000_000_000_000);
    assert_eq!(stat_time(far), None);
    assert_eq!(rfc3339_micros(far), None);
    let last = UNIX_EPOCH + Duration::from_secs(YEAR_10000_SECS - 1);
    assert_eq!(stat_time(last).as_deref(), Some("9999-12-31 23:59:59 GMT"));
    assert_eq!(rfc3339_micros(UNIX_EPOCH + Duration::from_secs(YEAR_10000_SECS)), None);
    let mut f = UplinkFrame::example(vec![1, 2, 3], CrcStatus::Ok);
    f.received_at = far;
    assert_eq!(RxPk::from_uplink(&f).time, None, "an unwritable time is left out");
}

#[test]
fn stat_uses_semtech_time_format() {
    let t = UNIX_EPOCH + Duration::from_secs(1_389_517_168);
    assert_eq!(stat_time(t).as_deref(), Some("2014-01-12 08:59:28 GMT"));
    let dg = Datagram {
        version: PROTOCOL_V2,
        token: 1,
        packet: Packet::PushData {
            gateway_id: Eui64([1; 8]),
            rxpk: vec![],
            stat: Some(Stat { time: stat_time(t), rxnb: 3, rxok: 2, ackr: 100.0, ..Stat::default() }),
        },
    };
    let bytes = dg.encode().expect("encode");
    let json = std::str::from_utf8(&bytes[12..]).expect("utf8");
    assert!(json.starts_with(r#"{"stat":{"time":"2014-01-12 08:59:28 GMT","rxnb":3"#), "{json}");
    assert_eq!(Datagram::parse(&bytes).expect("parse"), dg);
}
