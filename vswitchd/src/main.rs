//! `vswitchd` — the switch daemon's entry point: flags, daemonizing, logging, and
//! wiring the control server to the datapath.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};
use vswitchd::control::{self, Daemon};
use vswitchd::datapath::WorkerHandle;
use vswitchd::reconcile::Devices;
use vswitchd::{db, rpc};

/// A userspace, Open vSwitch-style virtual switch.
#[derive(Parser, Debug)]
#[command(name = "vswitchd", version)]
struct Args {
    /// Directory for the control socket (RUNDIR/vswitchd.sock) and lock.
    #[arg(long, default_value = rpc::DEFAULT_RUNDIR, env = "VSWITCH_RUNDIR")]
    rundir: PathBuf,
    /// Configuration file, rewritten atomically on every change.
    #[arg(long, default_value = rpc::DEFAULT_DB)]
    db: PathBuf,
    /// Run in the background; returns once the control socket accepts commands.
    #[arg(long)]
    detach: bool,
    /// Write the daemon's PID here.
    #[arg(long)]
    pidfile: Option<PathBuf>,
    /// Log to this file (default when detached: RUNDIR/vswitchd.log; otherwise stderr).
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// After traffic, keep polling this many microseconds before sleeping: the next
    /// frame (a reply, the rest of a burst) is picked up without a wakeup, which is
    /// most of a round trip's cost on a VM. 0 sleeps at once (least CPU).
    #[arg(long, default_value_t = vswitchd::DEFAULT_BUSY_POLL_US)]
    busy_poll_us: u64,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// Forks; the parent waits for the child to report readiness (or an error) on a pipe
/// and exits with the matching status. Returns the write end in the child.
fn detach() -> Result<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: fds is a writable array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and ours.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: called before any thread is started, so the child is a faithful copy.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            drop(rd);
            // SAFETY: plain setsid in the child.
            unsafe { libc::setsid() };
            Ok(wr)
        }
        _ => {
            drop(wr);
            // The child keeps the pipe open while it runs, so read one line, not to EOF.
            let mut reader = std::io::BufReader::new(File::from(rd));
            let mut msg = String::new();
            let _ = reader.read_line(&mut msg);
            if msg.starts_with("ready") {
                std::process::exit(0);
            }
            let _ = reader.read_to_string(&mut msg);
            if msg.is_empty() {
                msg = "vswitchd: daemon exited during startup\n".into();
            }
            eprint!("{msg}");
            std::process::exit(1);
        }
    }
}

/// Redirects stdin/stdout/stderr to /dev/null (the detached daemon's terminal is gone).
fn close_stdio() {
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Holds an exclusive lock on RUNDIR/vswitchd.lock for the life of the process.
fn lock_rundir(rundir: &Path) -> Result<File> {
    let path = rundir.join("vswitchd.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
        bail!(
            "another vswitchd is already running with --rundir {}",
            rundir.display()
        );
    }
    Ok(f)
}

fn init_logging(args: &Args, log_file: Option<&Path>) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("bad --log-level {:?}", args.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match log_file {
        Some(path) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    let ready_pipe = if args.detach {
        match detach() {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("vswitchd: {e:#}");
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    let report = |msg: &str| {
        if let Some(w) = &ready_pipe {
            // SAFETY: the pipe's write end is open; short writes are harmless here.
            let mut f = unsafe { File::from_raw_fd(libc::dup(w.as_raw_fd())) };
            let _ = f.write_all(msg.as_bytes());
        }
    };
    match run(args, &report) {
        Ok(()) => {}
        Err(e) => {
            error!("{e:#}");
            report(&format!("vswitchd: {e:#}\n"));
            eprintln!("vswitchd: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(mut args: Args, report: &dyn Fn(&str)) -> Result<()> {
    args.rundir = absolute(&args.rundir)?;
    args.db = absolute(&args.db)?;
    fs::create_dir_all(&args.rundir)
        .with_context(|| format!("cannot create {}", args.rundir.display()))?;
    let _lock = lock_rundir(&args.rundir)?;
    let log_file = match (&args.log_file, args.detach) {
        (Some(p), _) => Some(absolute(p)?),
        (None, true) => Some(args.rundir.join("vswitchd.log")),
        (None, false) => None,
    };
    init_logging(&args, log_file.as_deref())?;
    let pidfile = args.pidfile.as_deref().map(absolute).transpose()?;
    if let Some(p) = &pidfile {
        fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pidfile {}", p.display()))?;
    }
    let config = db::load(&args.db)?;
    info!(
        "vswitchd {} starting: {} bridge(s) from {}",
        env!("CARGO_PKG_VERSION"),
        config.bridges.len(),
        args.db.display()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let (learned_tx, mut learned_rx) = tokio::sync::mpsc::unbounded_channel();
        let worker = WorkerHandle::spawn(learned_tx, Duration::from_micros(args.busy_poll_us))
            .context("cannot start the datapath thread")?;
        let mut daemon = Daemon {
            config,
            db_path: args.db.clone(),
            devices: Devices::default(),
            worker,
        };
        daemon.reconcile().await;
        let shared = Arc::new(tokio::sync::Mutex::new(daemon));

        let sock = args.rundir.join(rpc::SOCKET_NAME);
        let _ = fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock)
            .with_context(|| format!("cannot listen on {}", sock.display()))?;
        fs::set_permissions(&sock, fs::Permissions::from_mode(0o600))?;
        info!("listening on {}", sock.display());
        report("ready\n");
        if args.detach {
            close_stdio();
        }

        let periodic = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    shared.lock().await.recheck().await;
                }
            })
        };
        // Flows `learn` actions made: installed in batches, like any other flows.
        let learner = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut batch = Vec::new();
                while learned_rx.recv_many(&mut batch, 1024).await > 0 {
                    shared.lock().await.learn(std::mem::take(&mut batch)).await;
                }
            })
        };
        let server = tokio::spawn(control::serve(listener, shared.clone()));

        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        server.abort();
        periodic.abort();
        learner.abort();
        shared.lock().await.shutdown().await;
        let _ = fs::remove_file(&sock);
        anyhow::Ok(())
    });
    if let Some(p) = &pidfile {
        let _ = fs::remove_file(p);
    }
    info!(
        "vswitchd stopped; configuration kept in {}",
        args.db.display()
    );
    result
}
