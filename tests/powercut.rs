//! Power cuts, simulated for real (issue 12). `kill -9` keeps the page cache; a power cut
//! does not. Here the daemon's `state_dir` lives on a FUSE filesystem that keeps every
//! write not yet fsynced in memory and drops it on command (tests/support/powercut/mod.rs
//! says exactly what it models), and each cycle ends in a power cut:
//!
//! 1. **load**: a packet forwarder (GWMP, one rxpk per datagram) sends uplinks of 4 devices
//!    at 50/s, for the whole test; each PUSH_ACK is recorded with the moment it came;
//! 2. **outage**: the broker (mosquitto, ChirpStack MQTT sink) stops; the load goes on, so
//!    the journal fills;
//! 3. **cut**, at a random moment of the outage: the daemon is SIGKILLed, the filesystem
//!    loses everything not fsynced, and the RAM stage directory (`[journal] stage_dir`, on
//!    tmpfs in production) is emptied;
//! 4. **restart** of berrygw on the same state directory, broker still down;
//! 5. **broker back**, **drain**.
//!
//! Checked, over all cycles: every accepted (PUSH_ACKed) uplink reaches the broker, except
//! ones acknowledged within the power-cut window before a cut (the journal's commit window
//! during an outage, `outage_commit_interval_ms` or `commit_interval_ms` if larger, plus
//! [`MARGIN_MS`]): the lost ones are counted and each must lie in that window; duplicates
//! are counted (allowed: at-least-once); each device's uplinks arrive in order; the
//! gateway's sequence numbers (`berrygw_seq`) grow with the forwarder's order across every
//! cut, so no seq is ever given to two uplinks; the daemon starts after every cut with its
//! stores opened as they were (no line about a corrupt or quarantined store in its log:
//! the journals, `uplink-seq`, `sessions.sqlite` (`[decode]`), `replay.sqlite` and
//! `audit.sqlite` (`[field]`, no devices), `ledger.sqlite` and `ledger.heartbeat`); every
//! audit entry the local API answered for (an `actuate` refused as `unknown_target`,
//! written durably before the answer) survives the cut; and the availability ledger records
//! each cut as a `crash` of the gateway (same boot) whose estimated start is at most
//! [`LEDGER_BOUND_MS`] before the cut (its heartbeat interval and check, 1 s each here, and
//! the fsync's latency).
//!
//! Run: `cargo test -p berrygw --test e2e_powercut -- --nocapture` (about 25 s for the
//! default 3 cycles). A longer run, as for BENCHMARKS.md:
//! `POWERCUT_CYCLES=100 cargo test -p berrygw --test e2e_powercut -- --nocapture`
//! (about 7 s a cycle); `POWERCUT_SEED=<n>` replays the cut moments of an earlier run
//! (printed at the start); `POWERCUT_BACKEND=sqlite` runs a journal backend other than the
//! default.
//!
//! Needs root and `/dev/fuse` (the kernel's fuse module; in a container
//! `--device /dev/fuse --cap-add SYS_ADMIN`; scripts/fresh-root's own devtmpfs shows it when
//! the host has the module); nothing to install: the mount is pure Rust (fuser without
//! libfuse, mount(2) as root), no fusermount. A missing /dev/fuse fails the test, never
//! skips it. It runs under qemu-user too (scripts/cross-test, about 30 s on aarch64 and
//! armv7): the FUSE server is emulated in the test's process, each berrygw in its own
//! qemu; only the support module's own in-process mmap case is left out there. A mount
//! still busy past the test's deadline is aborted (`PowerCutFs::abort_after`): the test
//! fails, it never hangs.

#[path = "support/powercut/mod.rs"]
mod powercut;
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berrygw_lora::phy::{build_data_uplink, AesKey, DataUplink, DevAddr};
use powercut::PowerCutFs;
use rand::{Rng, SeedableRng};
use support::gwmp;
use support::*;

/// Margin over the commit window in the power-cut window. An uplink's PUSH_ACK goes out
/// once the ingest holds it; the group commit that makes it durable closes at most one
/// commit window after the window's first append and then takes its own time: the hop from
/// the GWMP ingest to the journal (in-memory, well under 1 ms idle), the commit's writes and
/// fdatasync through FUSE (a few requests per commit, a few ms here), and scheduling on a
/// shared 2-core runner (tens of ms when a compiler next door is busy). 100 ms covers
/// those with room; more would hide a real loss.
const MARGIN_MS: u64 = 100;

/// Devices sending, round robin, one datagram every `SEND_EVERY`: 50 uplinks/s in all.
const DEVICES: usize = 4;
const SEND_EVERY: Duration = Duration::from_millis(20);
const NWK: [u8; 16] = [0x2b; 16];
const APP: [u8; 16] = [0x7e; 16];
const FORWARDER_EUI: [u8; 8] = [0x00, 0x16, 0xc0, 0x01, 0xff, 0x10, 0xa2, 0x35];

fn dev_addr(device: usize) -> u32 {
    0x2601_3000 + device as u32
}

fn dev_eui(device: usize) -> String {
    format!("70b3d57ed00030{device:02x}")
}

fn frame(device: usize, fcnt: u32) -> Vec<u8> {
    let temp = (fcnt % 400) as u16;
    let up = DataUplink {
        dev_addr: DevAddr::from_u32(dev_addr(device)),
        fcnt,
        confirmed: false,
        adr: false,
        f_port: 1,
        // Cayenne LPP temperature, so that the decoder makes a reading of each.
        payload: &[0x01, 0x67, (temp >> 8) as u8, temp as u8],
    };
    build_data_uplink(&up, &AesKey(NWK), &AesKey(APP)).expect("frame")
}

/// One uplink the forwarder sent.
#[derive(Clone, Debug)]
struct Uplink {
    device: usize,
    fcnt: u32,
    phy: Vec<u8>,
    /// Milliseconds since the test's start.
    sent_ms: f64,
    /// When its PUSH_ACK came, if it came.
    acked_ms: Option<f64>,
}

/// The packet forwarder: one thread sending at a steady rate and recording acks.
struct Load {
    uplinks: Arc<Mutex<Vec<Uplink>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(ingest: SocketAddr, t0: Instant) -> Load {
        let uplinks: Arc<Mutex<Vec<Uplink>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (uplinks, stop) = (uplinks.clone(), stop.clone());
            std::thread::spawn(move || {
                let peer = gwmp::Peer::bind();
                let mut token: u16 = 0;
                let mut by_token: HashMap<u16, usize> = HashMap::new();
                let mut fcnt = [0u32; DEVICES];
                let mut n = 0usize;
                let mut next = Instant::now();
                let mut buf = [0u8; 2048];
                let ms = |at: Instant| at.duration_since(t0).as_secs_f64() * 1000.0;
                while !stop.load(Ordering::Relaxed) {
                    let device = n % DEVICES;
                    n += 1;
                    fcnt[device] += 1;
                    let phy = frame(device, fcnt[device]);
                    token = token.wrapping_add(1);
                    let tmst = (t0.elapsed().as_micros() as u64 & 0xffff_ffff) as u32;
                    let body =
                        serde_json::json!({ "rxpk": [gwmp::rxpk(&phy, 868.1, "SF7BW125", -97, 7.5, tmst)] });
                    let now = Instant::now();
                    {
                        let mut u = uplinks.lock().expect("uplinks");
                        by_token.insert(token, u.len());
                        u.push(Uplink { device, fcnt: fcnt[device], phy, sent_ms: ms(now), acked_ms: None });
                    }
                    // A daemon that is down answers nothing (and the kernel says nothing).
                    let _ = peer.socket.send_to(
                        &gwmp::datagram(gwmp::PUSH_DATA, token, Some(FORWARDER_EUI), Some(&body)),
                        ingest,
                    );
                    next += SEND_EVERY;
                    if next + SEND_EVERY < Instant::now() {
                        next = Instant::now(); // fell behind (a slow moment): no burst
                    }
                    // Until the next send: take every PUSH_ACK as it comes.
                    loop {
                        let now = Instant::now();
                        if now >= next {
                            break;
                        }
                        let _ = peer.socket.set_read_timeout(Some(next - now));
                        let Ok((len, _)) = peer.socket.recv_from(&mut buf) else { continue };
                        let at = Instant::now();
                        if len >= 4 && buf[0] == 2 && buf[3] == gwmp::PUSH_ACK {
                            let t = u16::from_be_bytes([buf[1], buf[2]]);
                            if let Some(i) = by_token.get(&t) {
                                let mut u = uplinks.lock().expect("uplinks");
                                if u[*i].acked_ms.is_none() {
                                    u[*i].acked_ms = Some(ms(at));
                                }
                            }
                        }
                    }
                }
            })
        };
        Load { uplinks, stop, thread: Some(thread) }
    }

    fn snapshot(&self) -> Vec<Uplink> {
        self.uplinks.lock().expect("uplinks").clone()
    }

    /// The latest PUSH_ACK, in ms since the start.
    fn last_ack_ms(&self) -> Option<f64> {
        self.uplinks.lock().expect("uplinks").iter().rev().find_map(|u| u.acked_ms)
    }

    fn finish(&mut self) -> Vec<Uplink> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("load thread");
        }
        self.snapshot()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One power cut.
#[derive(Debug)]
struct Cut {
    cycle: usize,
    /// Just before the SIGKILL, ms since the start.
    at_ms: f64,
    /// When the restart was issued: every PUSH_ACK before it came from the killed daemon.
    restarted_ms: f64,
    report: powercut::CutReport,
    /// PUSH_ACKs received in the window before the cut.
    acked_in_window: usize,
}

/// Log lines that mean a store did not open as it was.
fn store_trouble(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("corrupt") || l.contains("quarantin") || l.contains("moved aside") || l.contains("integrity")
}

fn empty_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read stage dir").flatten() {
        let p = entry.path();
        let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
    }
}

/// `text` with `line` (`key = value`) added at the top of `[journal]`.
fn with_journal_line(text: &str, line: &str) -> String {
    text.replacen("[journal]\n", &format!("[journal]\n{line}\n"), 1)
}

/// An `actuate` of a device that does not exist: refused `unknown_target`, and audited
/// durably before the answer. True when the daemon answered.
fn audited_refusal(socket: &Path, target: &str) -> bool {
    let out = berrygw_command()
        .args(["actuate", target, "noop", "--socket"])
        .arg(socket)
        .output()
        .expect("run berrygw actuate");
    String::from_utf8_lossy(&out.stdout).contains("unknown_target")
}

/// What a power cut may take from the availability ledger: its heartbeat interval (1 s
/// here), the check that writes it (1 s) and the filesystem's latency (an fsync through
/// FUSE, under qemu-user too).
const LEDGER_BOUND_MS: i64 = 4_000;

fn audit_targets(socket: &Path) -> Option<HashSet<String>> {
    let out = berrygw_command()
        .args(["audit", "--json", "--limit", "100000", "--socket"])
        .arg(socket)
        .output()
        .ok()?;
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
    Some(entries.iter().filter_map(|e| e["target"].as_str().map(str::to_string)).collect())
}

/// The phy payloads delivered so far, each with its seqs, and the messages in arrival order.
fn delivered(sub: &Subscriber) -> Vec<(Vec<u8>, u64)> {
    sub.on_topic("/event/up").iter().map(|s| (s.uplink().phy_payload, s.seq())).collect()
}

#[test]
fn accepted_uplinks_survive_power_cuts_within_the_commit_window() {
    if !Path::new("/dev/fuse").exists() {
        panic!(
            "/dev/fuse is missing: this test needs the kernel's fuse module (modprobe fuse; in a \
             container --device /dev/fuse) and root. It is never skipped."
        );
    }
    let mut fs = PowerCutFs::mount().unwrap_or_else(|e| {
        panic!("mounting the power-cut FUSE filesystem failed: {e} (needs root and /dev/fuse)")
    });

    let cycles: usize = std::env::var("POWERCUT_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    // A cycle takes about 7 s (10 s under qemu-user): a hung mount fails the test instead.
    fs.abort_after(Duration::from_secs(300 + 120 * cycles as u64));
    let seed: u64 = std::env::var("POWERCUT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    println!("power cuts: {cycles} cycles, POWERCUT_SEED={seed}");

    let started = Instant::now();
    let started_wall = std::time::SystemTime::now();
    let ms = move || started.elapsed().as_secs_f64() * 1000.0;
    let work = tempfile::tempdir().expect("tmp");
    // In production a tmpfs: RAM, lost at a power cut like the page cache.
    let stage = tempfile::tempdir().expect("stage tmp");
    let state: PathBuf = fs.path().join("state");
    let mut broker = Mosquitto::start(work.path(), None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/up", None);

    // The decoder's registry: every device, so that sessions.sqlite takes counters.
    let registry = work.path().join("devices.toml");
    let devices: String = (0..DEVICES)
        .map(|d| {
            format!(
                "[[device]]\nname = \"d{d}\"\ndev_eui = \"{}\"\ncodec = \"cayenne_lpp\"\n\
                 abp = {{ dev_addr = \"{:08x}\", nwk_s_key = \"{}\", app_s_key = \"{}\" }}\n\n",
                dev_eui(d),
                dev_addr(d),
                hex::encode(NWK),
                hex::encode(APP)
            )
        })
        .collect();
    std::fs::write(&registry, devices).expect("registry");
    std::fs::set_permissions(&registry, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/profiles");

    let port = free_port();
    let url = broker.url(false);
    let radio = format!("[radio]\nkind = \"gwmp\"\n\n[radio.gwmp]\nbind = \"127.0.0.1:{port}\"\n");
    let sinks = format!(
        "[sinks.chirpstack]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\
         keep_alive_secs = 5\nreplay_gap_ms = 0\nreplay_rate = 0\n\n\
         [sinks.app]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [decode]\ndevices = \"{}\"\n\n\
         [field]\nprofile_dirs = [\"{}\"]\nrequire_clock_sync = false\n\n\
         [ledger]\nheartbeat_secs = 1\ncheck_secs = 1\nmin_outage_secs = 0\n",
        registry.display(),
        profiles.display()
    );
    // The journal as shipped (its default backend and windows) unless POWERCUT_BACKEND names
    // a backend, with the test's own stage directory: `[journal] stage_dir` holds the records
    // not yet synced to the state dir, on tmpfs so that kill -9 loses nothing; left at its
    // default (/run/berrygw/journal) it would survive the cut and hide losses.
    let backend = std::env::var("POWERCUT_BACKEND").ok();
    let mut text: String = config_with_radio(&state, "default", &radio, &sinks)
        .lines()
        .filter(|l| !l.starts_with("backend = ") && !l.starts_with("stage_dir = "))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(b) = &backend {
        text = with_journal_line(&text, &format!("backend = \"{b}\""));
    }
    text = with_journal_line(&text, &format!("stage_dir = \"{}\"", stage.path().display()));
    // The windows as the daemon itself reads them (defaults included). The cuts happen
    // during outages, where the journal commits every `outage_commit_interval_ms` (issue 12
    // lets the window grow while no far side is waiting); before the sink notices the
    // outage, every `commit_interval_ms`.
    let checked = work.path().join("checked.toml");
    std::fs::write(&checked, &text).expect("config");
    let journal = berrygw::config::load(&checked).expect("the test's config").config.journal;
    assert_eq!(journal.stage_dir().as_deref(), Some(stage.path()), "the stage is the test's");
    let commit_window = journal.commit_interval_ms.max(journal.outage_commit_interval_ms);
    let window_ms = (commit_window + MARGIN_MS) as f64;
    println!(
        "journal: backend {}, commit_interval_ms {}, outage_commit_interval_ms {}, stage_dir emptied at each cut",
        backend.as_deref().unwrap_or("(the default)"),
        journal.commit_interval_ms,
        journal.outage_commit_interval_ms
    );
    let socket = state.join("api.sock");

    let mut gw = Berrygw::start(work.path(), &text);
    let ingest: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut load = Load::start(ingest, started);
    wait_for(Duration::from_secs(30), "the first PUSH_ACK", || load.last_ack_ms());
    gw.wait_log(Duration::from_secs(30), "chirpstack sink: connected");
    let journals: Vec<String> = std::fs::read_dir(state.join("journal"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    println!("journals in the state dir: {journals:?}");

    let mut cuts: Vec<Cut> = Vec::new();
    let mut audited: Vec<String> = Vec::new();
    let mut troubles: Vec<String> = Vec::new();
    let mut ledger_bounds: Vec<i64> = Vec::new();
    for cycle in 1..=cycles {
        // Load, broker up; a couple of audited refusals.
        std::thread::sleep(Duration::from_millis(1500));
        let target = format!("ghost-{cycle}-load");
        if audited_refusal(&socket, &target) {
            audited.push(target);
        }
        std::thread::sleep(Duration::from_millis(1500));

        // Outage, the load going on; the cut at a random moment of it.
        broker.stop();
        let outage_ms = rng.gen_range(500..4000u64);
        std::thread::sleep(Duration::from_millis(outage_ms / 2));
        let target = format!("ghost-{cycle}-outage");
        if audited_refusal(&socket, &target) {
            audited.push(target);
        }
        std::thread::sleep(Duration::from_millis(outage_ms - outage_ms / 2));

        let at_ms = ms();
        let cut_wall_ms = now_ms();
        gw.kill9();
        let report = fs.cut();
        empty_dir(stage.path());
        let restarted_ms = ms();
        let acked_in_window = load
            .snapshot()
            .iter()
            .filter_map(|u| u.acked_ms)
            .filter(|a| *a > at_ms - window_ms && *a < restarted_ms)
            .count();
        println!(
            "cycle {cycle}: cut {outage_ms} ms into the outage; {} files reverted, {} unsynced pages \
             dropped; {acked_in_window} PUSH_ACKs in the last {window_ms} ms",
            report.files_reverted, report.pages_dropped
        );
        cuts.push(Cut { cycle, at_ms, restarted_ms, report, acked_in_window });

        // Restart on what survived, broker still down.
        let lines_before = gw.log().len();
        gw.restart();
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(Duration::from_secs(60), "berrygw to answer PUSH_DATA after the cut", || {
                load.last_ack_ms().filter(|a| *a > restarted_ms)
            })
        }));
        if answered.is_err() {
            let log: Vec<String> = gw.log().into_iter().skip(lines_before).collect();
            panic!(
                "cycle {cycle}: berrygw accepts nothing in the 60 s after the cut; its log since the restart:\n{}",
                log[log.len().saturating_sub(30)..].join("\n")
            );
        }
        let started_log: Vec<String> = gw.log().into_iter().skip(lines_before).collect();
        for line in started_log.iter().filter(|l| store_trouble(l)) {
            troubles.push(format!("cycle {cycle}: {line}"));
        }
        let opened = started_log.iter().filter(|l| l.contains("journal opened")).count();
        assert_eq!(opened, 2, "cycle {cycle}: both journals (chirpstack, app) open after the cut");
        for store in [
            "uplink-seq",
            "sessions.sqlite",
            "replay.sqlite",
            "audit.sqlite",
            "ledger.sqlite",
            "ledger.heartbeat",
        ] {
            assert!(state.join(store).exists(), "cycle {cycle}: {store} in the state dir after the cut");
        }
        let corrupt: Vec<String> = std::fs::read_dir(&state)
            .expect("state dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".corrupt-"))
            .collect();
        assert!(corrupt.is_empty(), "cycle {cycle}: stores moved aside after the cut: {corrupt:?}");
        // Every audit entry the daemon answered for was durable before the answer.
        let audit =
            wait_for(Duration::from_secs(30), "the audit log over the local API", || audit_targets(&socket));
        let missing: Vec<&String> = audited.iter().filter(|t| !audit.contains(*t)).collect();
        assert!(missing.is_empty(), "cycle {cycle}: audit entries lost in the cut: {missing:?}");
        // The availability ledger lost at most its last heartbeat interval (and the check
        // that writes it): the gateway's outage starts no earlier than that before the cut.
        let gateway_incidents =
            wait_for(Duration::from_secs(30), "the availability ledger over the local API", || {
                let report = availability_report(&socket)?;
                let gw: Vec<serde_json::Value> = report["incidents"]
                    .as_array()?
                    .iter()
                    .filter(|i| i["service"] == "gateway")
                    .cloned()
                    .collect();
                (gw.len() >= cycle).then_some(gw)
            });
        let last = gateway_incidents.iter().max_by_key(|i| i["id"].as_u64()).expect("one");
        let start = last["start_ms"].as_i64().expect("start");
        assert!(
            start <= cut_wall_ms && start >= cut_wall_ms - LEDGER_BOUND_MS,
            "cycle {cycle}: the ledger's last sign of life is {} ms before the cut (bound {LEDGER_BOUND_MS}): {last}",
            cut_wall_ms - start
        );
        assert_eq!(
            (last["cause"].as_str(), last["estimated"].as_bool()),
            (Some("crash"), Some(true)),
            "{last}"
        );
        ledger_bounds.push(cut_wall_ms - start);
        std::thread::sleep(Duration::from_millis(1000));

        // Broker back: drain what the journal kept.
        broker.restart();
        // Everything acknowledged before this cut's window, except what an earlier cut's
        // window may have taken.
        let excused = |a: f64| cuts.iter().any(|c| a > c.at_ms - window_ms && a < c.restarted_ms);
        let due: Vec<Vec<u8>> = load
            .snapshot()
            .into_iter()
            .filter(|u| u.acked_ms.is_some_and(|a| a < at_ms - window_ms && !excused(a)))
            .map(|u| u.phy)
            .collect();
        let drained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(Duration::from_secs(60), "the backlog to drain", || {
                let have: HashSet<Vec<u8>> = delivered(&sub).into_iter().map(|(p, _)| p).collect();
                due.iter().all(|p| have.contains(p)).then_some(())
            })
        }));
        if drained.is_err() {
            println!("cycle {cycle}: not everything acknowledged before the window arrived in 60 s (counted below)");
        }
    }

    // A last stretch of load with the broker up, then everything must arrive.
    std::thread::sleep(Duration::from_secs(2));
    let uplinks = load.finish();
    let last_cut_ms = cuts.last().map_or(0.0, |c| c.restarted_ms);
    let must: Vec<&Uplink> = uplinks.iter().filter(|u| u.acked_ms.is_some_and(|a| a > last_cut_ms)).collect();
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(Duration::from_secs(60), "the last uplinks to arrive", || {
            let have: HashSet<Vec<u8>> = delivered(&sub).into_iter().map(|(p, _)| p).collect();
            must.iter().all(|u| have.contains(&u.phy)).then_some(())
        })
    }));
    let stats = fs.stats();
    gw.stop();

    // ---- the account ----------------------------------------------------------------
    let messages = delivered(&sub);
    let mut first: HashMap<Vec<u8>, usize> = HashMap::new();
    for (i, (phy, _)) in messages.iter().enumerate() {
        first.entry(phy.clone()).or_insert(i);
    }
    let duplicates = messages.len() - first.len();
    // Duplicates by the cut they followed (arrival after that cut's restart, before the next).
    let mut dup_per_cut: BTreeMap<usize, usize> = BTreeMap::new();
    {
        let mut seen_once: HashSet<Vec<u8>> = HashSet::new();
        for m in sub.on_topic("/event/up") {
            let phy = m.uplink().phy_payload;
            if !seen_once.insert(phy) {
                let at = m.at.duration_since(started_wall).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
                let cycle = cuts.iter().rev().find(|c| c.restarted_ms <= at).map_or(0, |c| c.cycle);
                *dup_per_cut.entry(cycle).or_default() += 1;
            }
        }
    }
    let accepted: Vec<&Uplink> = uplinks.iter().filter(|u| u.acked_ms.is_some()).collect();
    let sent = uplinks.len();
    let known: HashSet<&Vec<u8>> = uplinks.iter().map(|u| &u.phy).collect();
    let strangers = first.keys().filter(|p| !known.contains(p)).count();

    // Each lost uplink against the cut of the daemon that acknowledged it.
    let mut lost_in_window = 0;
    let mut lost_beyond: Vec<String> = Vec::new();
    // Per cut: how many were lost, and how long before the cut the oldest of them was acked.
    let mut lost_per_cut: BTreeMap<usize, (usize, f64)> = BTreeMap::new();
    for u in accepted.iter().filter(|u| !first.contains_key(&u.phy)) {
        let acked = u.acked_ms.unwrap_or_default();
        match cuts.iter().find(|c| acked < c.restarted_ms) {
            Some(c) => {
                let before = c.at_ms - acked;
                let e = lost_per_cut.entry(c.cycle).or_default();
                e.0 += 1;
                e.1 = e.1.max(before);
                if before <= window_ms {
                    lost_in_window += 1;
                } else {
                    lost_beyond.push(format!(
                        "device {} fcnt {}: acknowledged {before:.0} ms before the cut of cycle {}",
                        u.device, u.fcnt, c.cycle
                    ));
                }
            }
            None => lost_beyond.push(format!(
                "device {} fcnt {}: acknowledged {:.0} ms after the last restart, no cut since",
                u.device,
                u.fcnt,
                acked - last_cut_ms
            )),
        }
    }
    let lost = lost_in_window + lost_beyond.len();

    // Order per device (first arrivals), and seqs growing with the forwarder's order.
    let index: HashMap<&Vec<u8>, &Uplink> = uplinks.iter().map(|u| (&u.phy, u)).collect();
    let mut by_arrival: Vec<(usize, &Vec<u8>)> = first.iter().map(|(p, i)| (*i, p)).collect();
    by_arrival.sort();
    let mut last_fcnt = [0u32; DEVICES];
    let mut out_of_order = Vec::new();
    for (_, phy) in &by_arrival {
        if let Some(u) = index.get(phy) {
            if u.fcnt <= last_fcnt[u.device] {
                out_of_order
                    .push(format!("device {} fcnt {} after {}", u.device, u.fcnt, last_fcnt[u.device]));
            }
            last_fcnt[u.device] = u.fcnt;
        }
    }
    let mut seq_of: HashMap<&Vec<u8>, HashSet<u64>> = HashMap::new();
    let mut phy_of: HashMap<u64, HashSet<&Vec<u8>>> = HashMap::new();
    for (phy, seq) in &messages {
        seq_of.entry(phy).or_default().insert(*seq);
        phy_of.entry(*seq).or_default().insert(phy);
    }
    let reused: Vec<u64> = phy_of.iter().filter(|(_, p)| p.len() > 1).map(|(s, _)| *s).collect();
    let reseqd = seq_of.values().filter(|s| s.len() > 1).count();
    let mut in_send_order: Vec<(f64, u64)> =
        seq_of.iter().filter_map(|(phy, s)| Some((index.get(phy)?.sent_ms, *s.iter().next()?))).collect();
    in_send_order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let backwards = in_send_order.windows(2).filter(|w| w[1].1 <= w[0].1).count();

    println!(
        "\n==== e2e_powercut: {cycles} cycles in {:.1} s (seed {seed}) ====",
        started.elapsed().as_secs_f64()
    );
    println!("power-cut window: the commit window + margin {MARGIN_MS} ms = {window_ms} ms");
    println!(
        "sent {sent}, accepted (PUSH_ACKed) {}, delivered {} distinct in {} messages ({duplicates} duplicates)",
        accepted.len(),
        first.len(),
        messages.len()
    );
    for c in &cuts {
        let (lost, oldest) = lost_per_cut.get(&c.cycle).copied().unwrap_or_default();
        println!(
            "  cut {}: {} files reverted, {} pages dropped, {} PUSH_ACKs in the window, {lost} lost \
             (the oldest acknowledged {oldest:.0} ms before the cut), {} duplicates after it",
            c.cycle,
            c.report.files_reverted,
            c.report.pages_dropped,
            c.acked_in_window,
            dup_per_cut.get(&c.cycle).unwrap_or(&0)
        );
    }
    println!("  before the first cut: {} duplicates (broker restarts)", dup_per_cut.get(&0).unwrap_or(&0));
    println!(
        "lost {lost}: {lost_in_window} within the window, {} beyond; audit entries checked {}; \
         fs: {} writes, {} fsyncs, {} KiB synced",
        lost_beyond.len(),
        audited.len(),
        stats.writes,
        stats.fsyncs,
        stats.bytes_synced / 1024
    );

    println!(
        "availability ledger: the last sign of life before each cut was {:?} ms before it (bound {LEDGER_BOUND_MS} ms)",
        ledger_bounds
    );
    assert!(troubles.is_empty(), "stores did not open as they were after a cut:\n{}", troubles.join("\n"));
    assert!(
        lost_beyond.is_empty(),
        "{} accepted uplinks lost beyond the {window_ms} ms power-cut window:\n{}",
        lost_beyond.len(),
        lost_beyond.join("\n")
    );
    let window_total: usize = cuts.iter().map(|c| c.acked_in_window).sum();
    assert!(lost <= window_total, "lost {lost} > the {window_total} acknowledged within the windows");
    assert!(out_of_order.is_empty(), "per-device order broken: {out_of_order:?}");
    assert!(reused.is_empty(), "a berrygw_seq given to different uplinks: {reused:?}");
    assert_eq!(reseqd, 0, "uplinks delivered under two different seqs");
    assert_eq!(backwards, 0, "seqs must grow with the forwarder's order, across every cut");
    assert_eq!(strangers, 0, "uplinks delivered that the forwarder never sent");
    assert!(accepted.len() > 100 * cycles, "the load ran: {} accepted", accepted.len());
}
