//! moto, the third-party AWS emulator (`moto[server]` from PyPI), as a child
//! process serving a real STS.
//!
//! moto runs `tests/moto_server.py` with the project virtualenv's Python. The
//! script serves until its standard input reaches EOF, and the [`Moto`] value
//! holds that pipe, so moto ends with the value or with the test process,
//! however it dies.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use tokio::sync::OnceCell;

/// How long moto may take to start answering.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A moto server on a loopback port: a real (if lenient) STS.
///
/// moto does not verify request signatures, web identity tokens or that roles
/// exist, and accepts unsigned `AssumeRoleWithWebIdentity` requests. Dropping
/// the value kills the server.
pub struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts a new moto server on a free loopback port, and waits until it
    /// answers.
    ///
    /// Python is `$TOKENBRIDGE_VENV/bin/python` if that variable is set, else
    /// `.venv/bin/python` at the workspace root.
    ///
    /// # Panics
    ///
    /// If that Python does not exist, or moto does not answer within 30 s.
    pub async fn start() -> Self {
        match tokio::task::spawn_blocking(Self::start_blocking).await {
            Ok(moto) => moto,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }

    /// The moto server that every test of this test binary shares, started on
    /// first use. It lives as long as the process, independent of any tokio
    /// runtime.
    pub async fn shared() -> &'static Self {
        static SHARED: OnceCell<Moto> = OnceCell::const_new();
        SHARED.get_or_init(Self::start).await
    }

    /// The endpoint URL: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The port moto listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    fn start_blocking() -> Self {
        let python = venv_python();
        assert!(
            python.exists(),
            "moto is not installed: run scripts/test (it creates .venv and installs the pinned \
             moto) or set TOKENBRIDGE_VENV (no {})",
            python.display()
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("moto_server.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", python.display()));
        let stdout = child.stdout.take().expect("moto's stdout is piped");
        // From here on, a panic drops `moto`, which kills the child.
        let mut moto = Self { child, port: 0 };
        let deadline = Instant::now() + STARTUP_TIMEOUT;

        // The script prints its port once listening; read it on a thread to
        // bound the wait.
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver.recv_timeout(STARTUP_TIMEOUT).unwrap_or_default();
        moto.port = line.trim().parse().unwrap_or_else(|_| {
            let status = moto.child.try_wait().ok().flatten();
            panic!(
                "moto did not start (printed {line:?} instead of its port; exit status \
                 {status:?}; its stderr is above): is moto installed in the venv of {}? \
                 Run scripts/test",
                python.display()
            )
        });

        // It listens already; make sure it accepts before handing it out.
        while TcpStream::connect_timeout(&moto.addr(), Duration::from_secs(1)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto at {} does not accept connections after {STARTUP_TIMEOUT:?}",
                moto.addr()
            );
            thread::sleep(Duration::from_millis(20));
        }
        moto
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python of the project's virtualenv (`$TOKENBRIDGE_VENV`, default `.venv`).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("TOKENBRIDGE_VENV").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("the crate lies inside the workspace")
                .join(".venv")
        },
        PathBuf::from,
    );
    venv.join("bin").join("python")
}
