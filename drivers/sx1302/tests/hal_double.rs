//! The real wrapper (owner thread, HAL translation, JIT, health) linked
//! against berrygw's C double of libloragw: what the HAL is told, what comes
//! out of it, what goes into it, and how a wedged concentrator is brought
//! back. Run with `--features hal-double`. The double is process-global, so
//! every test holds `double::exclusive()`. No assertion depends on timing:
//! waits are "until it happens, at most 10 s".
#![cfg(feature = "hal-double")]

use std::time::Duration;

use berrygw_lora::radio::RadioError;
use berrygw_lora::{
    CodeRate, CrcStatus, DownlinkFrame, Eui64, Frequency, Modulation, RadioIo, RadioSource, Taken, TxAck,
    TxStatus, TxTiming, UplinkFrame,
};
use berrygw_sx1302::boards::{self, BoardModel};
use berrygw_sx1302::config::{GpioLine, LineName, LineOffset, Off, RadioType, Setting, TxGain};
use berrygw_sx1302::double::{self, codes, DoubleGuard, RxPacket};
use berrygw_sx1302::gpio::RESET_STEP;
use berrygw_sx1302::{
    Applied, ChannelPlan, ConcentratorStatus, GpioEvent, HalError, HealthConfig, RecordingGpio, Sx1302Config,
    Sx1302Error, Sx1302Radio, Tuner,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const PATIENCE: Duration = Duration::from_secs(10);

struct Harness {
    uplinks: mpsc::Receiver<UplinkFrame>,
    downlinks: mpsc::Sender<DownlinkFrame>,
    tx_acks: mpsc::Receiver<TxAck>,
    status: watch::Receiver<ConcentratorStatus>,
    gpio: RecordingGpio,
    tuner: Tuner,
    task: JoinHandle<Result<(), RadioError>>,
    // Last: released only after the radio above is gone.
    _guard: DoubleGuard,
}

fn open(guard: DoubleGuard, config: &Sx1302Config) -> Harness {
    open_with(guard, config, None)
}

/// As `open`, with the pipeline's account of stored frames when `taken` is set.
fn open_with(guard: DoubleGuard, config: &Sx1302Config, taken: Option<watch::Receiver<Taken>>) -> Harness {
    let gpio = RecordingGpio::new();
    let radio = Sx1302Radio::open_with_gpio(config, Box::new(gpio.clone())).unwrap_or_else(|e| panic!("{e}"));
    start(guard, radio, gpio, taken)
}

/// Runs an opened radio as the pipeline would.
fn start(
    guard: DoubleGuard,
    radio: Sx1302Radio,
    gpio: RecordingGpio,
    taken: Option<watch::Receiver<Taken>>,
) -> Harness {
    let status = radio.status();
    let tuner = radio.tuner();
    assert_eq!(radio.kind(), "sx1302");
    let (up_tx, uplinks) = mpsc::channel(64);
    let (downlinks, down_rx) = mpsc::channel(64);
    let (ack_tx, tx_acks) = mpsc::channel(64);
    let task = tokio::spawn(Box::new(radio).start(RadioIo {
        uplinks: up_tx,
        downlinks: down_rx,
        tx_acks: ack_tx,
        taken,
    }));
    Harness { uplinks, downlinks, tx_acks, status, gpio, tuner, task, _guard: guard }
}

impl Harness {
    async fn uplink(&mut self) -> UplinkFrame {
        match tokio::time::timeout(PATIENCE, self.uplinks.recv()).await {
            Ok(Some(f)) => f,
            other => panic!("no uplink: {other:?}"),
        }
    }

    async fn ack(&mut self) -> TxAck {
        match tokio::time::timeout(PATIENCE, self.tx_acks.recv()).await {
            Ok(Some(a)) => a,
            other => panic!("no TxAck: {other:?}"),
        }
    }

    async fn send(&mut self, frame: DownlinkFrame) -> TxStatus {
        let id = frame.downlink_id;
        self.downlinks.send(frame).await.unwrap_or_else(|e| panic!("radio gone: {e}"));
        let ack = self.ack().await;
        assert_eq!(ack.downlink_id, id, "acks come in order, one per downlink");
        ack.status
    }

    async fn status_when(
        &mut self,
        what: &str,
        ok: impl Fn(&ConcentratorStatus) -> bool,
    ) -> ConcentratorStatus {
        let found = match tokio::time::timeout(PATIENCE, self.status.wait_for(|s| ok(s))).await {
            Ok(Ok(s)) => Some(s.clone()),
            _ => None,
        };
        found.unwrap_or_else(|| panic!("status never showed {what}: {:?}", *self.status.borrow()))
    }

    /// Closes the pipeline's side; the radio stops and the task ends. The double is
    /// free for the next test once this returns: read it afterwards only through
    /// `shut_down_holding`.
    async fn shut_down(self) -> Result<(), RadioError> {
        self.shut_down_holding().await.0
    }

    /// As `shut_down`, keeping the double to this test so what it shows after the
    /// stop is still this test's (another test may take it the moment it is free).
    async fn shut_down_holding(self) -> (Result<(), RadioError>, DoubleGuard) {
        let Harness { uplinks, downlinks, tx_acks, task, _guard: guard, .. } = self;
        drop((uplinks, downlinks, tx_acks));
        match tokio::time::timeout(PATIENCE, task).await {
            Ok(Ok(result)) => (result, guard),
            other => panic!("radio task did not end: {other:?}"),
        }
    }
}

async fn eventually(what: &str, ok: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn reset_sequence(board: &BoardModel) -> Vec<GpioEvent> {
    let line = |p: boards::BoardPin| GpioLine::Offset(LineOffset { chip: p.chip.into(), line: p.line });
    let mut events = Vec::new();
    if let Some(p) = board.power_enable {
        events.push(GpioEvent::Set { line: line(p), high: true });
        events.push(GpioEvent::Wait(RESET_STEP));
    }
    if let Some(p) = board.reset {
        events.push(GpioEvent::Set { line: line(p), high: true });
        events.push(GpioEvent::Wait(RESET_STEP));
        events.push(GpioEvent::Set { line: line(p), high: false });
        events.push(GpioEvent::Wait(RESET_STEP));
    }
    events
}

fn lora_downlink(
    id: u32,
    frequency: u32,
    sf: u8,
    power_dbm: i8,
    timing: TxTiming,
    len: usize,
) -> DownlinkFrame {
    DownlinkFrame {
        downlink_id: id,
        phy_payload: (0..len).map(|i| i as u8).collect(),
        frequency: Frequency(frequency),
        modulation: Modulation::Lora { spreading_factor: sf, bandwidth: 125_000, code_rate: CodeRate::Cr4_5 },
        power_dbm,
        timing,
        invert_iq: true,
        board: 0,
        antenna: 0,
    }
}

#[tokio::test]
async fn configures_the_hal_with_the_eu868_plan_on_a_rak2287() {
    let h = open(double::exclusive(), &Sx1302Config::for_board("rak2287"));

    let board = double::board_conf().unwrap_or_else(|| panic!("board not configured"));
    assert_eq!(
        board,
        double::BoardConf {
            lorawan_public: true,
            clksrc: 0,
            full_duplex: false,
            com_spi: true,
            com_path: "/dev/spidev0.0".into()
        }
    );
    let rf0 = double::rf_conf(0).unwrap_or_else(|| panic!("rf 0"));
    assert_eq!(
        rf0,
        double::RfConf {
            enable: true,
            freq_hz: 867_500_000,
            rssi_offset: -215.4,
            rssi_tcomp: [0.0, 0.0, 20.41, 2162.56, 0.0],
            radio_type: codes::RADIO_SX1250,
            tx_enable: true,
            single_input_mode: true,
        }
    );
    let rf1 = double::rf_conf(1).unwrap_or_else(|| panic!("rf 1"));
    assert_eq!((rf1.freq_hz, rf1.tx_enable, rf1.single_input_mode), (868_500_000, false, false));

    let expected_if = [
        (0, -400_000),
        (0, -200_000),
        (0, 0),
        (0, 200_000),
        (0, 400_000),
        (1, -400_000),
        (1, -200_000),
        (1, 0),
    ];
    for (chain, (rf_chain, offset)) in (0u8..).zip(expected_if) {
        let c = double::if_conf(chain).unwrap_or_else(|| panic!("if {chain}"));
        assert_eq!(
            (c.enable, c.rf_chain, c.freq_hz, c.bandwidth),
            (true, rf_chain, offset, codes::BW_125KHZ)
        );
    }
    let service = double::if_conf(8).unwrap_or_else(|| panic!("if 8"));
    assert_eq!(
        service,
        double::IfConf {
            enable: true,
            rf_chain: 1,
            freq_hz: -200_000,
            bandwidth: codes::BW_250KHZ,
            datarate: 7,
            implicit_hdr: false
        }
    );
    let fsk = double::if_conf(9).unwrap_or_else(|| panic!("if 9"));
    assert_eq!(
        (fsk.enable, fsk.rf_chain, fsk.freq_hz, fsk.bandwidth, fsk.datarate),
        (true, 1, 300_000, codes::BW_125KHZ, 50_000)
    );
    assert_eq!(double::demod_conf(), Some(0xFF));
    assert_eq!(double::tx_gain_conf(0), Some(boards::rak2287::MODEL.tx_gain_tables[0].steps.to_vec()));
    assert_eq!(double::tx_gain_conf(1), None, "no power table for a receive-only chain");
    assert_eq!(h.gpio.events(), reset_sequence(&boards::rak2287::MODEL));
    assert!(double::is_started());

    let (stopped, _still_ours) = h.shut_down_holding().await;
    assert!(stopped.is_ok());
    assert!(!double::is_started(), "lgw_stop on shutdown");
}

#[tokio::test]
async fn every_board_gets_its_own_radios_power_table_and_reset_lines() {
    for board in boards::BOARDS {
        let h = open(double::exclusive(), &Sx1302Config::for_board(board.name));
        for (chain, radio) in (0u8..).zip(&board.radios) {
            let rf = double::rf_conf(chain).unwrap_or_else(|| panic!("{} rf {chain}", board.name));
            assert_eq!(
                (rf.rssi_offset, rf.tx_enable, rf.single_input_mode),
                (radio.rssi_offset, radio.tx_enable, radio.single_input_mode),
                "{} rf {chain}",
                board.name
            );
        }
        assert_eq!(double::tx_gain_conf(0), Some(board.tx_gain_tables[0].steps.to_vec()), "{}", board.name);
        assert_eq!(h.gpio.events(), reset_sequence(board), "{}", board.name);
        assert!(h.shut_down().await.is_ok());
    }
}

#[tokio::test]
async fn configuration_overrides_reach_the_hal() {
    let mut c = Sx1302Config::for_board("wm1302");
    c.spidev = Some("/dev/spidev1.0".into());
    c.lorawan_public = Some(false);
    c.clock_source = Some(1);
    c.radio_0.radio_type = Some(RadioType::Sx1257);
    c.radio_0.frequency = Some(867_700_000);
    c.radio_0.rssi_offset = Some(-166.0);
    c.radio_0.single_input_mode = Some(false);
    let lut = vec![TxGain::sx1250(10, 0, 2), TxGain::sx1250(14, 1, 9)];
    c.radio_0.tx_gain_lut = Some(lut.clone());
    c.multi_sf_channels = Some(vec![867_900_000, 868_300_000]);
    c.fsk = Some(Setting::Off(Off::None));
    let reset = GpioLine::Named(LineName { name: "GPIO6".into() });
    c.gpio.reset = Some(Setting::On(reset.clone()));
    c.gpio.power_enable = Some(Setting::Off(Off::None));
    let h = open(double::exclusive(), &c);

    let board = double::board_conf().unwrap_or_else(|| panic!("board"));
    assert_eq!((board.com_path.as_str(), board.lorawan_public, board.clksrc), ("/dev/spidev1.0", false, 1));
    let rf0 = double::rf_conf(0).unwrap_or_else(|| panic!("rf 0"));
    assert_eq!(
        (rf0.radio_type, rf0.freq_hz, rf0.rssi_offset, rf0.single_input_mode),
        (codes::RADIO_SX1257, 867_700_000, -166.0, false)
    );
    assert_eq!(double::tx_gain_conf(0), Some(lut));
    let if0 = double::if_conf(0).unwrap_or_else(|| panic!("if 0"));
    assert_eq!((if0.rf_chain, if0.freq_hz), (0, 200_000));
    let if1 = double::if_conf(1).unwrap_or_else(|| panic!("if 1"));
    assert_eq!((if1.rf_chain, if1.freq_hz), (1, -200_000));
    for chain in 2..8 {
        assert_eq!(double::if_conf(chain).map(|c| c.enable), Some(false), "if {chain} disabled");
    }
    assert_eq!(double::if_conf(9).map(|c| c.enable), Some(false), "FSK switched off");
    assert_eq!(
        h.gpio.events(),
        vec![
            GpioEvent::Set { line: reset.clone(), high: true },
            GpioEvent::Wait(RESET_STEP),
            GpioEvent::Set { line: reset, high: false },
            GpioEvent::Wait(RESET_STEP),
        ],
        "the named reset line replaces GPIO17, and no power-enable line is driven"
    );
    assert!(h.shut_down().await.is_ok());
}

/// The chip is read again only once the pipeline has stored what the last read gave: until
/// then new frames wait in the concentrator, so a crash can lose only the one fetch in
/// flight. (The wait below can only make this test pass wrongly, never fail wrongly.)
#[tokio::test]
async fn the_concentrator_is_read_again_only_once_the_last_fetch_is_stored() {
    let (pipeline, taken) = watch::channel(Taken::default());
    let mut h = open_with(double::exclusive(), &Sx1302Config::for_board("rak2287"), Some(taken));
    let payload = [0x40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    assert!(double::push_rx(RxPacket::lora(868_100_000, 7, codes::BW_125KHZ, &payload)));
    assert_eq!(h.uplink().await.frequency, Frequency(868_100_000));

    assert!(double::push_rx(RxPacket::lora(868_300_000, 7, codes::BW_125KHZ, &payload)));
    let reads = double::call_count("lgw_receive");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(double::rx_pending(), 1, "the second frame stays in the chip while the first is not stored");
    assert_eq!(double::call_count("lgw_receive"), reads, "no read while the first frame is not stored");

    pipeline.send_modify(|t| t.handled = 1);
    assert_eq!(h.uplink().await.frequency, Frequency(868_300_000));
    assert_eq!(double::rx_pending(), 0);
    assert!(h.shut_down().await.is_ok());
}

/// A pipeline that never stores what it was handed does not let the chip's buffer overflow:
/// after the wait (5 s) the concentrator is read anyway.
#[tokio::test]
async fn a_pipeline_that_stores_nothing_does_not_stop_the_concentrator_for_good() {
    let (_pipeline, taken) = watch::channel(Taken::default());
    let mut h = open_with(double::exclusive(), &Sx1302Config::for_board("rak2287"), Some(taken));
    let payload = [0x40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    assert!(double::push_rx(RxPacket::lora(868_100_000, 7, codes::BW_125KHZ, &payload)));
    assert_eq!(h.uplink().await.frequency, Frequency(868_100_000));
    assert!(double::push_rx(RxPacket::lora(868_300_000, 7, codes::BW_125KHZ, &payload)));
    // Never settled: the second frame still comes out, within the harness's patience (10 s).
    assert_eq!(h.uplink().await.frequency, Frequency(868_300_000));
    assert!(h.shut_down().await.is_ok());
}

#[tokio::test]
async fn received_packets_become_uplink_frames() {
    let mut h = open(double::exclusive(), &Sx1302Config::for_board("rak2287"));
    let payload = [0x40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    assert!(double::push_rx(
        RxPacket::lora(868_100_000, 7, codes::BW_125KHZ, &payload)
            .signal(-57.4, 9.25)
            .chains(5, 1)
            .count_us(123_456_789)
    ));
    assert!(double::push_rx(
        RxPacket::lora(867_300_000, 9, codes::BW_125KHZ, &payload).status(codes::STAT_CRC_BAD)
    ));
    assert!(double::push_rx(
        RxPacket::lora(868_500_000, 12, codes::BW_125KHZ, &payload)
            .coderate(codes::CR_LORA_4_8)
            .signal(-121.6, -17.5)
            .chains(7, 1)
    ));
    assert!(double::push_rx(RxPacket::fsk(868_800_000, 50_000, &payload).chains(9, 1)));
    assert!(double::push_rx(
        RxPacket::lora(868_300_000, 7, codes::BW_250KHZ, &payload).status(codes::STAT_NO_CRC)
    ));

    let f = h.uplink().await;
    assert_eq!(f.phy_payload, payload);
    assert_eq!(f.frequency, Frequency(868_100_000));
    assert_eq!(
        f.modulation,
        Modulation::Lora { spreading_factor: 7, bandwidth: 125_000, code_rate: CodeRate::Cr4_5 }
    );
    assert_eq!((f.rssi, f.snr, f.crc), (-57, 9.25, CrcStatus::Ok));
    assert_eq!((f.channel, f.rf_chain, f.board, f.counter_us), (5, 1, 0, 123_456_789));

    let f = h.uplink().await;
    assert_eq!((f.frequency, f.crc), (Frequency(867_300_000), CrcStatus::Bad));

    let f = h.uplink().await;
    assert_eq!(
        f.modulation,
        Modulation::Lora { spreading_factor: 12, bandwidth: 125_000, code_rate: CodeRate::Cr4_8 }
    );
    assert_eq!((f.rssi, f.snr), (-122, -17.5));

    let f = h.uplink().await;
    assert_eq!(f.modulation, Modulation::Fsk { datarate: 50_000, frequency_deviation: 25_000 });
    assert_eq!((f.frequency, f.channel, f.crc, f.snr), (Frequency(868_800_000), 9, CrcStatus::Ok, 0.0));

    let f = h.uplink().await;
    assert_eq!(f.crc, CrcStatus::Missing);
    assert_eq!(
        f.modulation,
        Modulation::Lora { spreading_factor: 7, bandwidth: 250_000, code_rate: CodeRate::Cr4_5 }
    );

    let s = h.status_when("5 uplinks", |s| s.uplinks == 5).await;
    assert_eq!(s.uplinks_dropped, 0);
    assert!(h.shut_down().await.is_ok());
}

#[tokio::test]
async fn unreadable_packets_are_dropped_and_counted_and_the_rest_flows() {
    let mut h = open(double::exclusive(), &Sx1302Config::for_board("rak2287"));
    let payload = [0x40, 9, 9, 9];
    assert!(double::push_rx(RxPacket::lora(868_100_000, 7, codes::BW_125KHZ, &payload).modulation(0x77)));
    assert!(double::push_rx(RxPacket::lora(868_100_000, 7, codes::BW_125KHZ, &payload).size(300)));
    assert!(double::push_rx(RxPacket::lora(868_100_000, 7, codes::BW_125KHZ, &payload).status(0x42)));
    assert!(double::push_rx(RxPacket::lora(868_100_000, 13, codes::BW_125KHZ, &payload)));
    assert!(double::push_rx(RxPacket::lora(868_300_000, 8, codes::BW_125KHZ, &payload)));
    let f = h.uplink().await;
    assert_eq!(f.frequency, Frequency(868_300_000), "only the readable packet comes through");
    let s = h.status_when("4 dropped", |s| s.uplinks_dropped == 4).await;
    assert_eq!(s.uplinks, 1);
    assert!(h.shut_down().await.is_ok());
}

#[tokio::test]
async fn a_class_a_downlink_is_handed_to_lgw_send_at_its_counter_time() {
    let mut h = open(double::exclusive(), &Sx1302Config::for_board("rak2287"));
    let at = double::peek_instcnt().wrapping_add(1_000_000);
    let frame = lora_downlink(7, 868_100_000, 9, 14, TxTiming::Counter(at), 17);
    assert_eq!(h.send(frame.clone()).await, TxStatus::Ok);
    eventually("lgw_send", || double::sent().len() == 1).await;
    let sent = double::sent().remove(0);
    assert_eq!(
        sent,
        double::SentPacket {
            freq_hz: 868_100_000,
            tx_mode: codes::TIMESTAMPED,
            count_us: at,
            rf_chain: 0,
            rf_power: 14,
            modulation: codes::MOD_LORA,
            bandwidth: codes::BW_125KHZ,
            datarate: 9,
            coderate: codes::CR_LORA_4_5,
            invert_pol: true,
            f_dev: 0,
            preamble: 8,
            no_crc: true,
            no_header: false,
            payload: frame.phy_payload,
        }
    );
    h.status_when("one sent", |s| s.tx_sent == 1).await;
    assert!(h.shut_down().await.is_ok());
}

#[tokio::test]
async fn an_immediate_downlink_goes_out_at_once_in_immediate_mode() {
    let mut h = open(double::exclusive(), &Sx1302Config::for_board("corecell"));
    let frame = lora_downlink(8, 869_525_000, 12, 27, TxTiming::Immediately, 33);
    assert_eq!(h.send(frame).await, TxStatus::Ok);
    eventually("lgw_send", || double::sent().len() == 1).await;
    let sent = double::sent().remove(0);
    assert_eq!(
        (sent.tx_mode, sent.freq_hz, sent.rf_power, sent.datarate),
        (codes::IMMEDIATE, 869_525_000, 27, 12)
    );
    assert!(h.shut_down().await.is_ok());
}

#[tokio::test]
async fn every_refused_downlink_is_answered_with_its_reason() {
    let mut c = Sx1302Config::for_board("rak2287");
    c.antenna_gain_dbi = 0;
    let mut h = open(double::exclusive(), &c);
    let now = double::peek_instcnt();
    let at = |ms: u32| TxTiming::Counter(now.wrapping_add(ms * 1_000));

    assert_eq!(
        h.send(lora_downlink(1, 868_100_000, 7, 14, TxTiming::GpsEpoch(1_000), 12)).await,
        TxStatus::GpsUnlocked
    );
    assert_eq!(h.send(lora_downlink(2, 868_100_000, 7, 14, at(0), 12)).await, TxStatus::TooLate);
    assert_eq!(h.send(lora_downlink(3, 868_100_000, 7, 14, at(60_000), 12)).await, TxStatus::TooEarly);
    assert_eq!(h.send(lora_downlink(4, 870_500_000, 7, 14, at(3_000), 12)).await, TxStatus::TxFrequency);
    assert_eq!(h.send(lora_downlink(5, 868_100_000, 7, 20, at(3_000), 12)).await, TxStatus::TxPower);
    assert_eq!(h.send(lora_downlink(6, 868_100_000, 7, 14, at(20_000), 12)).await, TxStatus::Ok);
    assert_eq!(h.send(lora_downlink(7, 868_300_000, 7, 14, at(20_020), 12)).await, TxStatus::CollisionPacket);

    let s = h.status_when("six refused", |s| s.tx_refused == 6).await;
    assert_eq!(s.tx_sent, 0);
    let (stopped, _still_ours) = h.shut_down_holding().await;
    assert!(stopped.is_ok());
    assert!(double::sent().is_empty(), "the accepted one was dropped at shutdown, never sent");
}

#[tokio::test]
async fn the_duty_cycle_of_a_sub_band_is_enforced() {
    let mut h = open(double::exclusive(), &Sx1302Config::for_board("rak2287"));
    let now = double::peek_instcnt();
    // 255 bytes at SF12 are 9.02 s on the air: three fill 27 s of g1's 36 s an hour; a
    // fourth would make 36.08 s.
    for (id, start_ms) in [(1, 1_000), (2, 10_100), (3, 19_200)] {
        let f = lora_downlink(
            id,
            868_500_000,
            12,
            14,
            TxTiming::Counter(now.wrapping_add(start_ms * 1_000)),
            255,
        );
        assert_eq!(h.send(f).await, TxStatus::Ok, "frame {id}");
    }
    let f = lora_downlink(4, 868_500_000, 12, 14, TxTiming::Counter(now.wrapping_add(28_300_000)), 255);
    assert_eq!(h.send(f).await, TxStatus::DutyCycleOverflow);
    // g3 (RX2, 10 %) has its own budget.
    let f = lora_downlink(5, 869_525_000, 12, 14, TxTiming::Counter(now.wrapping_add(28_300_000)), 255);
    assert_eq!(h.send(f).await, TxStatus::Ok);
    assert!(h.shut_down().await.is_ok());
}

#[tokio::test]
async fn a_concentrator_still_emitting_does_not_get_a_second_frame() {
    let mut h = open(double::exclusive(), &Sx1302Config::for_board("rak2287"));
    double::set_tx_status(codes::TX_EMITTING);
    assert_eq!(h.send(lora_downlink(1, 868_100_000, 7, 14, TxTiming::Immediately, 12)).await, TxStatus::Ok);
    let s = h.status_when("a failed TX", |s| s.tx_failed == 1).await;
    assert_eq!(s.tx_sent, 0);
    assert!(double::sent().is_empty());
    assert!(h.shut_down().await.is_ok());
}

fn restarting_config() -> Sx1302Config {
    let mut c = Sx1302Config::for_board("wm1302");
    c.health = HealthConfig { max_hal_errors: 3, counter_stall_ms: 200, ..HealthConfig::default() };
    c
}

#[tokio::test]
async fn repeated_receive_errors_reset_and_restart_the_concentrator() {
    let mut h = open(double::exclusive(), &restarting_config());
    let one_reset = reset_sequence(&boards::wm1302::MODEL);
    assert_eq!(h.gpio.events(), one_reset);

    double::fail_next("lgw_receive", 3);
    let s = h.status_when("a restart", |s| s.restarts == 1 && s.running).await;
    assert!(s.last_error.unwrap_or_default().contains("3 consecutive lgw_receive calls failed"));
    assert_eq!(double::call_count("lgw_start"), 2);
    assert!(double::call_count("lgw_stop") >= 1);
    assert_eq!(
        h.gpio.events(),
        [one_reset.clone(), one_reset].concat(),
        "power-enable and reset pulse again"
    );
    assert_eq!(double::board_conf().map(|b| b.com_path), Some("/dev/spidev0.0".into()), "reconfigured");

    // Uplinks flow again afterwards.
    assert!(double::push_rx(RxPacket::lora(868_100_000, 7, codes::BW_125KHZ, &[0x40, 1, 2, 3])));
    assert_eq!(h.uplink().await.phy_payload, vec![0x40, 1, 2, 3]);
    assert!(h.shut_down().await.is_ok());
}

#[tokio::test]
async fn a_stalled_counter_means_wedged() {
    let mut h = open(double::exclusive(), &restarting_config());
    double::freeze_instcnt(true);
    let s = h.status_when("a restart", |s| s.restarts == 1 && s.running).await;
    assert!(s.last_error.as_deref().unwrap_or_default().contains("counter stopped"), "{s:?}");
    assert!(double::push_rx(RxPacket::lora(868_300_000, 8, codes::BW_125KHZ, &[0x80, 7])));
    assert_eq!(h.uplink().await.phy_payload, vec![0x80, 7]);
    assert!(h.shut_down().await.is_ok());
}

#[tokio::test]
async fn a_restart_that_fails_is_retried_until_the_concentrator_runs() {
    let mut h = open(double::exclusive(), &restarting_config());
    double::fail_next("lgw_get_instcnt", 3);
    double::fail_next("lgw_start", 1);
    let failed =
        |s: &ConcentratorStatus| s.last_error.as_deref().is_some_and(|e| e.contains("lgw_start failed"));
    let down = h.status_when("a failed restart", |s| failed(s) && !s.running).await;
    assert_eq!(down.restarts, 1);
    // While it is down, downlinks are refused rather than queued.
    let f = lora_downlink(1, 868_100_000, 7, 14, TxTiming::Immediately, 12);
    assert_eq!(h.send(f).await, TxStatus::InternalError);
    let up = h.status_when("running again", |s| s.running).await;
    assert_eq!(up.restarts, 2);
    assert!(double::push_rx(RxPacket::lora(868_100_000, 7, codes::BW_125KHZ, &[0x40])));
    assert_eq!(h.uplink().await.phy_payload, vec![0x40]);
    assert!(h.shut_down().await.is_ok());
}

#[tokio::test]
async fn a_restart_voids_queued_downlinks() {
    let mut h = open(double::exclusive(), &restarting_config());
    let at = double::peek_instcnt().wrapping_add(5_000_000);
    assert_eq!(h.send(lora_downlink(1, 868_100_000, 7, 14, TxTiming::Counter(at), 12)).await, TxStatus::Ok);
    double::fail_next("lgw_receive", 3);
    let s = h.status_when("restart", |s| s.restarts == 1 && s.running).await;
    assert_eq!(s.tx_failed, 1);
    let (stopped, _still_ours) = h.shut_down_holding().await;
    assert!(stopped.is_ok());
    assert!(double::sent().is_empty());
}

#[tokio::test]
async fn status_reports_the_concentrator_eui_and_temperature() {
    let guard = double::exclusive();
    double::set_eui(0x0016_C001_FF1E_2B3C);
    double::set_temperature(41.5);
    let h = open(guard, &Sx1302Config::for_board("rak5146"));
    let s = h.status.borrow().clone();
    assert!(s.running);
    assert_eq!(s.board, "rak5146");
    assert_eq!(s.eui, Some(Eui64::from_u64(0x0016_C001_FF1E_2B3C)));
    assert_eq!(s.temperature_c, Some(41.5));
    assert_eq!((s.restarts, s.last_error.clone()), (0, None));
    let mut status = h.status.clone();
    assert!(h.shut_down().await.is_ok());
    assert!(!status.borrow_and_update().running);
}

#[test]
fn a_start_failure_is_an_error_and_leaves_the_hal_free() {
    let _guard = double::exclusive();
    double::fail_next("lgw_start", 1);
    let config = Sx1302Config::for_board("rak2287");
    let err = Sx1302Radio::open_with_gpio(&config, Box::new(RecordingGpio::new())).err();
    match err {
        Some(Sx1302Error::Hal(HalError { call: "lgw_start", .. })) => {}
        other => panic!("expected lgw_start failure, got {other:?}"),
    }
    let text = Sx1302Radio::open_with_gpio(&config, Box::new(RecordingGpio::new()))
        .map(|_| ())
        .err()
        .map(|e| e.to_string());
    assert_eq!(text, None, "the next open works");
}

#[test]
fn a_reset_line_that_cannot_be_driven_is_a_start_error() {
    let _guard = double::exclusive();
    let gpio = RecordingGpio::new();
    gpio.fail_with(Some("Device or resource busy"));
    let err = Sx1302Radio::open_with_gpio(&Sx1302Config::for_board("rak2287"), Box::new(gpio)).err();
    let text = err.map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(text, "concentrator reset failed: GPIO /dev/gpiochip0 line 17: Device or resource busy");
    assert_eq!(double::call_count("lgw_start"), 0);
}

#[test]
fn only_one_concentrator_can_be_open() {
    let _guard = double::exclusive();
    let config = Sx1302Config::for_board("rak2287");
    let first = Sx1302Radio::open_with_gpio(&config, Box::new(RecordingGpio::new()));
    assert!(first.is_ok());
    let second = Sx1302Radio::open_with_gpio(&config, Box::new(RecordingGpio::new()));
    assert!(matches!(second, Err(Sx1302Error::AlreadyOpen)));
    drop(first);
    // Dropping a radio that was never started stops its thread and the concentrator.
    let deadline = std::time::Instant::now() + PATIENCE;
    while double::is_started() {
        assert!(std::time::Instant::now() < deadline, "the concentrator was never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_configuration_error_is_reported_before_touching_the_hal() {
    let _guard = double::exclusive();
    let err =
        Sx1302Radio::open_with_gpio(&Sx1302Config::for_board("rak7248"), Box::new(RecordingGpio::new()))
            .err()
            .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("[radio.sx1302] unknown board `rak7248`; berrygw knows: corecell, rak2287, rak5146, wm1302")
    );
    assert_eq!(double::call_count("lgw_board_setconf"), 0);
}

/// Semtech's six-channel EU868 test plan, as its test LNS gives it in `upchannels`.
fn six_channels() -> ChannelPlan {
    ChannelPlan {
        multi_sf: vec![868_100_000, 868_300_000, 868_500_000, 868_850_000, 869_050_000, 869_525_000],
        ..ChannelPlan::default()
    }
}

fn eu868_channels() -> Vec<u32> {
    vec![
        867_100_000,
        867_300_000,
        867_500_000,
        867_700_000,
        867_900_000,
        868_100_000,
        868_300_000,
        868_500_000,
    ]
}

#[tokio::test]
async fn a_tuner_restarts_the_concentrator_on_another_plan_and_only_when_it_differs() {
    let mut h = open(double::exclusive(), &Sx1302Config::for_board("rak2287"));
    let s = h.status_when("running", |s| s.running).await;
    assert_eq!((s.channels_hz, s.plan_from, s.retunes), (eu868_channels(), None, 0));
    // A downlink queued for later is voided by the restart, as by any restart.
    let at = double::peek_instcnt().wrapping_add(5_000_000);
    assert_eq!(h.send(lora_downlink(1, 868_100_000, 7, 14, TxTiming::Counter(at), 12)).await, TxStatus::Ok);

    let applied = h.tuner.apply(&six_channels(), "the LNS's router_config").await;
    assert_eq!(applied, Ok(Applied::Retuned));
    assert_eq!(double::call_count("lgw_start"), 2);
    let one_reset = reset_sequence(&boards::rak2287::MODEL);
    assert_eq!(h.gpio.events(), [one_reset.clone(), one_reset].concat(), "reset as at a start");
    // Both radios centred on the six channels (868.0375–869.5875 MHz fit one radio's span).
    let centre = 868_812_500;
    assert_eq!(double::rf_conf(0).map(|r| (r.freq_hz, r.tx_enable)), Some((centre, true)));
    for (chain, f) in (0u8..).zip(six_channels().multi_sf) {
        let c = double::if_conf(chain).unwrap_or_else(|| panic!("if {chain}"));
        assert_eq!((c.enable, c.rf_chain, c.freq_hz), (true, 0, f as i32 - centre as i32), "if {chain}");
    }
    for chain in [6, 7, 8, 9] {
        assert_eq!(double::if_conf(chain).map(|c| c.enable), Some(false), "if {chain} off: not in the plan");
    }
    let s = h.status_when("the new plan", |s| s.retunes == 1 && s.running).await;
    assert_eq!(s.channels_hz, six_channels().multi_sf);
    assert_eq!(s.plan_from.as_deref(), Some("the LNS's router_config"));
    assert_eq!((s.tx_failed, s.restarts), (1, 0), "the queued downlink voided; a retune is no wedge restart");

    // The same plan again (every reconnection brings it): nothing restarts.
    assert_eq!(h.tuner.apply(&six_channels(), "the LNS's router_config").await, Ok(Applied::Unchanged));
    assert_eq!(double::call_count("lgw_start"), 2);
    assert!(double::push_rx(RxPacket::lora(869_525_000, 9, codes::BW_125KHZ, &[0x40, 9])));
    assert_eq!(h.uplink().await.phy_payload, vec![0x40, 9]);
    assert!(h.shut_down().await.is_ok());
}

#[tokio::test]
async fn a_plan_the_concentrator_cannot_take_leaves_it_on_the_one_it_had() {
    let mut h = open(double::exclusive(), &Sx1302Config::for_board("rak2287"));
    h.status_when("running", |s| s.running).await;
    // Refused before anything stops: more channels than demodulators, and a span no
    // two radios hear.
    let nine =
        ChannelPlan { multi_sf: (0..9).map(|i| 867_100_000 + i * 100_000).collect(), ..Default::default() };
    let wide = ChannelPlan { multi_sf: vec![863_100_000, 866_100_000, 869_900_000], ..Default::default() };
    for (plan, why) in [(nine, "9 channels given, the SX1302 has 8"), (wide, "the plan spans")] {
        let e = h.tuner.apply(&plan, "LNS").await.err().unwrap_or_default();
        assert!(e.contains(why), "{e}");
    }
    assert_eq!(double::call_count("lgw_stop"), 0);
    assert_eq!(double::call_count("lgw_start"), 1);

    // One that fails to start: back on the configuration's plan, running.
    double::fail_next("lgw_start", 1);
    let e = h.tuner.apply(&six_channels(), "LNS").await.err().unwrap_or_default();
    assert!(e.contains("did not start on that plan") && e.contains("lgw_start failed"), "{e}");
    let s = h.status_when("running again", |s| s.running).await;
    assert_eq!((s.channels_hz, s.plan_from, s.retunes), (eu868_channels(), None, 0));
    assert_eq!(double::rf_conf(0).map(|r| r.freq_hz), Some(867_500_000));
    assert_eq!(double::if_conf(8).map(|c| c.enable), Some(true), "the service channel is back");
    assert!(double::push_rx(RxPacket::lora(867_100_000, 7, codes::BW_125KHZ, &[0x40, 1])));
    assert_eq!(h.uplink().await.phy_payload, vec![0x40, 1]);
    assert!(h.shut_down().await.is_ok());
}

#[tokio::test]
async fn a_concentrator_can_start_on_a_plan_kept_from_before() {
    let guard = double::exclusive();
    let gpio = RecordingGpio::new();
    let config = Sx1302Config::for_board("wm1302");
    let radio = Sx1302Radio::open_on_plan(&config, Some((&six_channels(), "kept")), Box::new(gpio.clone()))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut h = start(guard, radio, gpio, None);
    let s = h.status_when("running", |s| s.running).await;
    assert_eq!((s.channels_hz, s.plan_from.as_deref()), (six_channels().multi_sf, Some("kept")));
    assert_eq!(double::call_count("lgw_start"), 1, "started once, on the kept plan");
    // The LNS's plan, the same: nothing to do.
    assert_eq!(h.tuner.apply(&six_channels(), "LNS").await, Ok(Applied::Unchanged));
    assert_eq!(h.status_when("told", |s| s.plan_from.as_deref() == Some("LNS")).await.retunes, 0);
    assert!(h.shut_down().await.is_ok());
}
