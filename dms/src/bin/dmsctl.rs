//! dmsctl: the command-line client of dmsd.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dms::client::ManagerProxy;
use dms::domain::Domain;
use dms::service::{DomainView, ErrorKind, Status};
use dms::session::{AccountView, Session};
use dms::usage::StatusReport;
use dms_accounting::records::{summarize, GroupBy, UsageFilter, UsageRecord};
use dms_policies::PolicySet;

/// dmsctl - control the Domain Management Service.
///
/// Talks to dmsd over its private socket (peer-to-peer D-Bus). Authorization is from your
/// uid: root and the admin group may do everything; a domain's owner what the VO policy allows.
///
/// Exit status: 0 success; 1 failure; 2 invalid argument or policy; 3 not found;
/// 4 permission denied; 5 conflict (e.g. already frozen); 6 dmsd unreachable; 7 timeout.
/// `domain run` exits with the command's status (128+N when killed by signal N).
#[derive(Debug, Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    /// dmsd's API socket.
    #[arg(
        long,
        global = true,
        env = "DMS_SOCKET",
        default_value = "/run/dms/dms.sock"
    )]
    socket: PathBuf,
    /// Talk to dmsd on the D-Bus system bus instead of the private socket.
    #[arg(long, global = true)]
    system_bus: bool,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// What `dmsctl monitor` prints.
enum Event {
    State(dms::client::StateChanged),
    Limit(dms::client::LimitEvent),
}

#[derive(Debug, clap::Args)]
struct UsageArgs {
    /// Only this VO.
    #[arg(long)]
    vo: Option<String>,
    /// Only this local account.
    #[arg(long)]
    account: Option<String>,
    /// Only this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Only this batch job.
    #[arg(long)]
    job: Option<String>,
    /// Only records that ended at or after this Unix time.
    #[arg(long)]
    since: Option<u64>,
    /// Only records that ended at or before this Unix time.
    #[arg(long)]
    until: Option<u64>,
    /// Print sums grouped by vo, account or domain instead of the records.
    #[arg(long, value_parser = ["vo", "account", "domain", "all"])]
    sum: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create, inspect and control domains.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Check or reload VO policy files.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Show node capacity and commitments, the policies in force, and every domain you may
    /// see with its state, owner, quotas and current usage.
    ///
    /// With --json prints the /status document (schema in docs/status.md), the same one
    /// dmsd serves over HTTP at /status.
    Status,
    /// List and sum usage records (written when a domain or a per-job domain ends).
    ///
    /// Records are in <state_dir>/usage: usage.jsonl (JSON lines, rotated) and ur/*.xml (OGF
    /// Usage Record 1.0, for APEL-style accounting). Admins see all records, others their own.
    Usage(UsageArgs),
    /// Print domain state changes ("NAME OLD -> NEW") and Domain Monitor limit events
    /// ("NAME limit KIND xCOUNT (ACTION): DETAIL") as they happen, until interrupted.
    Monitor,
    /// Run a command inside a running domain (same as `domain exec`).
    ///
    /// The command runs in the domain's cgroups and all its namespaces (pid, mount, uts, ipc,
    /// network, cgroup) as the domain's owner (admins may give --user), with a clean
    /// environment (PATH, HOME, USER, LOGNAME, DMS_DOMAIN plus --env), in the owner's home.
    /// stdin/stdout/stderr are this terminal's; dmsctl exits with the command's status
    /// (128+N if killed by signal N). Frozen and failed domains are refused (exit 5); other
    /// users' domains too, unless the policy's owner_may grants "exec" (exit 4).
    Exec(ExecArgs),
    /// Create a new domain for an identity, run one command in it, and destroy the domain when
    /// the command exits (admins), as `crun run` does a container.
    ///
    /// The domain is made from the identity's policy (quotas, namespaces, network) as
    /// `domain create` makes it, and the command runs as `exec` runs it: as the owner (admins
    /// may give --as), with a clean environment plus --env, on this terminal's
    /// stdin/stdout/stderr. dmsctl exits with the command's status (128+N if killed by signal
    /// N) after the domain and everything in it are gone. The identity's domain must not exist
    /// yet (exit 5): for per-job policies give a --job of its own. While the command runs,
    /// `domain create` and logins of that identity are refused (exit 5), since they would end
    /// with it.
    RunOnce(RunOnceArgs),
    /// Map a grid identity to a local account (admins).
    ///
    /// Looks up the grid-mapfile: the first line matching the primary (first) FQAN, else the
    /// DN; when it has neither, the `map` rules of the policy files the same way. A static
    /// account is recorded; a pool (".atlas") leases the identity's account, the same one every
    /// time while the lease lives (new identities get the lowest free one). Secondary groups
    /// come from the group-mapfile, then the policies' `group_map`. Prints the account.
    Map {
        /// Certificate subject, e.g. "/DC=org/DC=example/CN=Jane Doe".
        #[arg(long)]
        dn: String,
        /// VOMS FQAN, primary first (repeatable), e.g. /atlas/Role=production.
        #[arg(long = "fqan")]
        fqans: Vec<String>,
    },
    /// List, show and release leased accounts.
    #[command(subcommand)]
    Account(AccountCmd),
    /// List open PAM sessions (all for admins, your own otherwise).
    #[command(subcommand)]
    Session(SessionCmd),
    /// Tell dmsd about batch jobs (from a Slurm prolog and epilog).
    #[command(subcommand)]
    Job(JobCmd),
}

#[derive(Debug, Subcommand)]
enum AccountCmd {
    /// Every lease and static mapping, with open sessions and domains.
    List,
    /// One account: DN, FQANs, groups, lease times, sessions, domains.
    Show {
        /// Account name.
        name: String,
    },
    /// Release a lease so the account can go to another identity. Refused while the account
    /// has open sessions or domains. Its home directory is kept.
    Release {
        /// Account name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum SessionCmd {
    /// Open sessions: id, user, domain, service, remote host, pid.
    List,
}

#[derive(Debug, Subcommand)]
enum JobCmd {
    /// A job starts on this node (Slurm Prolog: the defaults come from its environment).
    Start {
        /// Job id.
        #[arg(long, env = "SLURM_JOB_ID")]
        id: String,
        /// Job user.
        #[arg(long, env = "SLURM_JOB_USER")]
        user: String,
        /// CPUs allocated here (0 = unknown).
        #[arg(long, env = "SLURM_JOB_CPUS_PER_NODE", default_value_t = 0, value_parser = parse_cpus)]
        cpus: u32,
    },
    /// A job ended (Slurm Epilog): its per-job domains are destroyed.
    Finish {
        /// Job id.
        #[arg(long, env = "SLURM_JOB_ID")]
        id: String,
    },
}

/// Slurm writes CPUs per node as e.g. "4" or "4(x2)"; the count before "(" is ours.
fn parse_cpus(s: &str) -> Result<u32, String> {
    let n = s.split('(').next().unwrap_or("").trim();
    n.parse()
        .map_err(|_| format!("{s:?} is not a CPU count (e.g. 4 or 4(x2))"))
}

#[derive(Debug, Subcommand)]
enum DomainCmd {
    /// Ensure the domain of an identity: create it per policy, or show the existing one.
    Create(Identity),
    /// List domains (all for admins, your own otherwise).
    List,
    /// Show one domain with its quotas and current usage.
    Show {
        /// Domain name.
        name: String,
    },
    /// Freeze every process of a domain (verified; undone if it cannot complete).
    Freeze {
        /// Domain name.
        name: String,
    },
    /// Thaw a frozen domain.
    Thaw {
        /// Domain name.
        name: String,
    },
    /// Save a libvirt guest's memory and device state to the domain repository and stop it
    /// (owners need the freeze permission). Its next login, or `restore`, resumes it.
    Save {
        /// Domain name.
        name: String,
    },
    /// Resume a saved libvirt guest from its saved state.
    Restore {
        /// Domain name.
        name: String,
    },
    /// Kill every process of a domain and remove it.
    Destroy {
        /// Domain name.
        name: String,
    },
    /// Move an existing process into a domain.
    Attach {
        /// Domain name.
        name: String,
        /// Process id.
        pid: i32,
    },
    /// Print what a single-threaded root process needs to enter a running domain itself
    /// (JSON for `dms-enter` and scripts: init pid and start time, cgroup files, namespaces).
    JoinInfo {
        /// Domain name.
        name: String,
    },
    /// Run a command inside a running domain (its cgroups and namespaces) as its owner, with a
    /// clean environment; waits and passes the exit status through. stdin/stdout/stderr are
    /// this terminal's. Refused for frozen or failed domains.
    #[command(visible_alias = "run")]
    Exec(ExecArgs),
}

/// What to run and where.
#[derive(Debug, clap::Args)]
struct ExecArgs {
    /// Domain name.
    name: String,
    /// Run as this user instead of the owner (admins only).
    #[arg(long, default_value = "")]
    user: String,
    /// Working directory (default: the user's home).
    #[arg(long, default_value = "")]
    cwd: String,
    /// Extra environment variables, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Print the pid and return at once instead of waiting.
    #[arg(long)]
    no_wait: bool,
    /// The command and its arguments (after --).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// The identity a domain is for (its policy decides the domain's name and quotas).
#[derive(Debug, clap::Args)]
struct Identity {
    /// Local account that owns the domain.
    #[arg(long)]
    user: String,
    /// VO (optional when --fqan is given).
    #[arg(long, default_value = "")]
    vo: String,
    /// Primary VOMS FQAN, e.g. /atlas/Role=production.
    #[arg(long, default_value = "")]
    fqan: String,
    /// Batch job id (needed for per-job domains).
    #[arg(long, default_value = "")]
    job: String,
}

/// The identity whose new domain runs the command, and the command.
#[derive(Debug, clap::Args)]
struct RunOnceArgs {
    #[command(flatten)]
    id: Identity,
    /// Run the command as this user instead of the owner.
    #[arg(long = "as", value_name = "USER", default_value = "")]
    run_as: String,
    /// Working directory (default: the user's home).
    #[arg(long, default_value = "")]
    cwd: String,
    /// Extra environment variables, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The command and its arguments (after --).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Validate policy files (or directories) without a daemon; errors as file:line:column.
    Check {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Ask dmsd to reload its policy directory (the previous policies stay if it fails).
    Reload,
}

struct Failure {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Failed => 1,
        ErrorKind::InvalidArgument => 2,
        ErrorKind::NotFound => 3,
        ErrorKind::PermissionDenied => 4,
        ErrorKind::Conflict => 5,
        ErrorKind::Timeout => 7,
    }
}

impl From<zbus::Error> for Failure {
    fn from(e: zbus::Error) -> Self {
        if let zbus::Error::MethodError(name, msg, _) = &e {
            if let Some(kind) = name.as_str().strip_prefix("io.dms.Error.") {
                return fail(
                    exit_code(ErrorKind::from_name(kind)),
                    msg.clone().unwrap_or_else(|| kind.to_string()),
                );
            }
        }
        fail(1, e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dmsctl: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("dmsctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn connect(endpoint: &dms::client::Endpoint) -> Result<ManagerProxy<'static>, Failure> {
    dms::client::connect(endpoint).await.map_err(|e| fail(6, e))
}

/// --env KEY=VALUE arguments as pairs.
fn parse_env(env: Vec<String>) -> Result<Vec<(String, String)>, Failure> {
    env.into_iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(fail(2, format!("--env {e:?}: expected KEY=VALUE"))),
        })
        .collect()
}

fn print_json(s: &str) {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v) => println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| s.into())
        ),
        Err(_) => println!("{s}"),
    }
}

fn decode<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, Failure> {
    serde_json::from_str(s).map_err(|e| fail(1, format!("unexpected answer from dmsd: {e}")))
}

fn fmt_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn fmt_bytes(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), dms_policies::units::format_size)
}

fn fmt_cpu(m: Option<u32>) -> String {
    m.map_or_else(|| "-".into(), |m| format!("{}%", m / 10))
}

fn print_domains(list: &[Domain]) {
    println!(
        "{:<28} {:<9} {:<10} {:<8} {:<6} {:>6} {:>8} {:>6}",
        "NAME", "STATE", "OWNER", "VO", "GRAN", "CPU", "MEMORY", "PIDS"
    );
    for d in list {
        println!(
            "{:<28} {:<9} {:<10} {:<8} {:<6} {:>6} {:>8} {:>6}",
            d.name,
            d.state.as_str(),
            d.owner.user,
            d.vo,
            d.granularity.as_str(),
            fmt_cpu(d.limits.cpu_millicores),
            fmt_bytes(d.limits.memory_max),
            fmt_opt(d.limits.pids_max),
        );
    }
}

fn print_domain(v: &DomainView) {
    let d = &v.domain;
    let l = &d.limits;
    println!("name:        {}", d.name);
    println!(
        "state:       {}{}",
        d.state.as_str(),
        d.reason
            .as_ref()
            .map_or(String::new(), |r| format!(" ({r})"))
    );
    println!("owner:       {} (uid {})", d.owner.user, d.owner.uid);
    println!(
        "vo:          {}  group: {}  role: {}",
        d.vo,
        fmt_opt(d.group.as_ref()),
        fmt_opt(d.role.as_ref())
    );
    println!(
        "rule:        {}",
        d.rule.as_deref().unwrap_or("VO defaults")
    );
    println!(
        "granularity: {}  backend: {}  priority: {}",
        d.granularity.as_str(),
        d.backend.as_str(),
        d.priority.as_str()
    );
    let may: Vec<&str> = d.owner_may.iter().map(|p| p.as_str()).collect();
    println!("owner may:   {}", may.join(", "));
    println!(
        "limits:      cpu {} weight {}  memory {} soft {} swap {}  pids {}  cpuset {}",
        fmt_cpu(l.cpu_millicores),
        fmt_opt(l.cpu_weight),
        fmt_bytes(l.memory_max),
        fmt_bytes(l.memory_soft),
        fmt_bytes(l.swap_max),
        fmt_opt(l.pids_max),
        l.cpuset_cpus.as_deref().unwrap_or("-"),
    );
    println!("processes:   {}", fmt_opt(v.processes));
    if let Some(u) = &v.usage {
        println!(
            "usage:       cpu {:.2}s  memory {} (max {})  pids {}  oom kills {}  io read {} write {}",
            u.cpu_usage_ns as f64 / 1e9,
            fmt_bytes(Some(u.memory_usage_bytes)),
            fmt_bytes(u.memory_max_usage_bytes),
            u.pids_current,
            fmt_opt(u.oom_kills),
            fmt_bytes(u.io_read_bytes),
            fmt_bytes(u.io_write_bytes),
        );
    }
}

fn print_accounts(list: &[AccountView]) {
    println!(
        "{:<14} {:>7} {:<10} {:>4} {:<24} DN",
        "ACCOUNT", "UID", "POOL", "SESS", "FQAN"
    );
    for a in list {
        let l = &a.lease;
        println!(
            "{:<14} {:>7} {:<10} {:>4} {:<24} {}",
            l.account,
            l.uid,
            l.pool.as_deref().unwrap_or("(static)"),
            a.sessions,
            l.fqans.first().map_or("-", String::as_str),
            l.dn
        );
    }
}

fn print_account(a: &AccountView) {
    let l = &a.lease;
    println!("account:   {} (uid {}, gid {})", l.account, l.uid, l.gid);
    println!(
        "pool:      {}",
        l.pool.as_deref().unwrap_or("(static mapping)")
    );
    println!("dn:        {}", l.dn);
    println!(
        "fqans:     {}",
        if l.fqans.is_empty() {
            "-".into()
        } else {
            l.fqans.join(" ")
        }
    );
    println!(
        "groups:    {}",
        if l.groups.is_empty() {
            "-".into()
        } else {
            l.groups.join(" ")
        }
    );
    println!("leased at: {}  last used: {}", l.leased_at, l.used_at);
    println!("sessions:  {}", a.sessions);
    println!(
        "domains:   {}",
        if a.domains.is_empty() {
            "-".into()
        } else {
            a.domains.join(" ")
        }
    );
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let endpoint = if cli.system_bus {
        dms::client::Endpoint::SystemBus
    } else {
        dms::client::Endpoint::Socket(cli.socket.clone())
    };
    match cli.cmd {
        Cmd::Policy(PolicyCmd::Check { paths }) => {
            let mut files = Vec::new();
            for p in &paths {
                if p.is_dir() {
                    match PolicySet::load_dir(p) {
                        Ok(set) => files.extend(set.files().iter().cloned()),
                        Err(e) => return Err(fail(2, e.to_string())),
                    }
                } else {
                    files.push(p.clone());
                }
            }
            match PolicySet::load_files(&files) {
                Ok(set) => {
                    if cli.json {
                        println!(
                            "{}",
                            serde_json::json!({"ok": true, "vos": set.vo_names(), "files": set.files()})
                        );
                    } else {
                        println!(
                            "ok: {} file(s), VOs: {}",
                            set.files().len(),
                            set.vo_names().join(", ")
                        );
                    }
                    Ok(0)
                }
                Err(e) => Err(fail(2, format!("policy check failed:\n{e}"))),
            }
        }
        Cmd::Policy(PolicyCmd::Reload) => {
            let p = connect(&endpoint).await?;
            let notes = p.reload_policies().await?;
            if cli.json {
                println!("{}", serde_json::json!({"ok": true, "changes": notes}));
            } else {
                println!("policies reloaded");
                for n in notes {
                    println!("  {n}");
                }
            }
            Ok(0)
        }
        Cmd::Map { dn, fqans } => {
            let p = connect(&endpoint).await?;
            let s = p.map_identity(&dn, &fqans).await?;
            if cli.json {
                print_json(&s);
            } else {
                let l: dms::accounts::Lease = decode(&s)?;
                println!("{}", l.account);
            }
            Ok(0)
        }
        Cmd::Account(AccountCmd::List) => {
            let p = connect(&endpoint).await?;
            let s = p.list_accounts().await?;
            if cli.json {
                print_json(&s);
            } else {
                print_accounts(&decode::<Vec<AccountView>>(&s)?);
            }
            Ok(0)
        }
        Cmd::Account(AccountCmd::Show { name }) => {
            let p = connect(&endpoint).await?;
            let s = p.get_account(&name).await?;
            if cli.json {
                print_json(&s);
            } else {
                print_account(&decode(&s)?);
            }
            Ok(0)
        }
        Cmd::Account(AccountCmd::Release { name }) => {
            let p = connect(&endpoint).await?;
            p.release_account(&name).await?;
            if !cli.json {
                println!("released {name}");
            }
            Ok(0)
        }
        Cmd::Session(SessionCmd::List) => {
            let p = connect(&endpoint).await?;
            let s = p.list_sessions().await?;
            if cli.json {
                print_json(&s);
            } else {
                let list: Vec<Session> = decode(&s)?;
                println!(
                    "{:<6} {:<12} {:<28} {:<10} {:<16} {:>8}",
                    "ID", "USER", "DOMAIN", "SERVICE", "RHOST", "PID"
                );
                for x in list {
                    println!(
                        "{:<6} {:<12} {:<28} {:<10} {:<16} {:>8}",
                        x.id,
                        x.user,
                        x.domain,
                        x.service,
                        x.rhost.as_deref().unwrap_or("-"),
                        x.pid
                    );
                }
            }
            Ok(0)
        }
        Cmd::Job(JobCmd::Start { id, user, cpus }) => {
            let p = connect(&endpoint).await?;
            let s = p.job_start(&id, &user, cpus).await?;
            if cli.json {
                print_json(&s);
            }
            Ok(0)
        }
        Cmd::Job(JobCmd::Finish { id }) => {
            let p = connect(&endpoint).await?;
            let destroyed = p.job_finish(&id).await?;
            if cli.json {
                println!("{}", serde_json::json!({"destroyed": destroyed}));
            } else {
                for d in destroyed {
                    println!("destroyed {d}");
                }
            }
            Ok(0)
        }
        Cmd::Status => {
            let p = connect(&endpoint).await?;
            let s = p.node_status().await?;
            if cli.json {
                print_json(&s);
                return Ok(0);
            }
            let st: StatusReport = decode(&s)?;
            let policy: Status = decode(&p.status().await?)?;
            let n = &st.node;
            println!(
                "{}  dmsd {}  cgroup {}  cpus {} (committed {:.2})  memory {} (committed {})",
                n.hostname,
                st.version,
                n.cgroup_version,
                n.cpus,
                n.committed_cpu_cores,
                dms_policies::units::format_size(n.memory_bytes),
                dms_policies::units::format_size(n.committed_memory_bytes)
            );
            let counts: Vec<String> = st
                .domains_by_state
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            println!(
                "domains: {}  sessions: {}  leases: {}  VOs: {}",
                if counts.is_empty() {
                    "none".into()
                } else {
                    counts.join(", ")
                },
                n.sessions,
                n.leases,
                policy.vos.join(", ")
            );
            if !st.domains.is_empty() {
                println!();
                println!(
                    "{:<28} {:<8} {:<12} {:<8} {:>6} {:>9} {:>10} {:>10} {:>5}",
                    "DOMAIN",
                    "STATE",
                    "ACCOUNT",
                    "VO",
                    "CPUS",
                    "CPU-SEC",
                    "MEM",
                    "MEM-MAX",
                    "PROCS"
                );
                for d in &st.domains {
                    let u = d.usage.as_ref();
                    println!(
                        "{:<28} {:<8} {:<12} {:<8} {:>6} {:>9} {:>10} {:>10} {:>5}{}",
                        d.name,
                        d.state,
                        d.account,
                        d.vo,
                        d.quotas.cpu_cores.map_or("-".into(), |c| format!("{c:.2}")),
                        u.map_or("-".into(), |u| format!("{:.1}", u.cpu_seconds)),
                        fmt_bytes(u.map(|u| u.memory_bytes)),
                        fmt_bytes(d.quotas.memory_bytes),
                        u.map_or("-".into(), |u| u.processes.to_string()),
                        if d.stale { "  (stale)" } else { "" }
                    );
                }
            }
            Ok(0)
        }
        Cmd::Usage(a) => {
            let p = connect(&endpoint).await?;
            let filter = UsageFilter {
                vo: a.vo,
                account: a.account,
                domain: a.domain,
                job: a.job,
                since: a.since,
                until: a.until,
            };
            let filter_json = serde_json::to_string(&filter)
                .map_err(|e| fail(1, format!("encoding the filter: {e}")))?;
            let s = p.usage_records(&filter_json).await?;
            let records: Vec<UsageRecord> = decode(&s)?;
            if let Some(by) = a.sum {
                let group = match by.as_str() {
                    "vo" => GroupBy::Vo,
                    "account" => GroupBy::Account,
                    "domain" => GroupBy::Domain,
                    _ => GroupBy::None,
                };
                let sums = summarize(&records, group);
                if cli.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&sums).unwrap_or_default()
                    );
                } else {
                    println!(
                        "{:<28} {:>7} {:>12} {:>12} {:>12} {:>10}",
                        by.to_uppercase(),
                        "RECORDS",
                        "WALL-SEC",
                        "CPU-USER",
                        "CPU-SYS",
                        "MEM-MAX"
                    );
                    for x in sums {
                        println!(
                            "{:<28} {:>7} {:>12} {:>12.1} {:>12.1} {:>10}",
                            if x.key.is_empty() { "(all)" } else { &x.key },
                            x.records,
                            x.wall_seconds,
                            x.cpu_user_seconds,
                            x.cpu_system_seconds,
                            fmt_bytes(x.memory_max_bytes)
                        );
                    }
                }
            } else if cli.json {
                print_json(&s);
            } else {
                println!(
                    "{:<28} {:<12} {:<8} {:>10} {:>8} {:>9} {:>10} {:<12}",
                    "DOMAIN", "ACCOUNT", "VO", "END", "WALL-S", "CPU-S", "MEM-MAX", "CAUSE"
                );
                for r in records {
                    println!(
                        "{:<28} {:<12} {:<8} {:>10} {:>8} {:>9.1} {:>10} {:<12}",
                        r.domain,
                        r.account,
                        r.vo,
                        r.end,
                        r.wall_seconds,
                        r.cpu_seconds,
                        fmt_bytes(r.memory_max_bytes),
                        r.exit_cause
                    );
                }
            }
            Ok(0)
        }
        Cmd::Monitor => {
            use futures_util::StreamExt;
            let p = connect(&endpoint).await?;
            let states = p.receive_state_changed().await?.map(Event::State);
            let limits = p.receive_limit_event().await?.map(Event::Limit);
            let mut stream = futures_util::stream::select(states, limits);
            // On the private socket dmsd sends signals only to clients that ask.
            p.subscribe().await?;
            // Tell a script reading our output that the subscription is in place.
            if cli.json {
                println!("{}", serde_json::json!({"monitoring": true}));
            } else {
                println!("monitoring domain state changes and limit events");
            }
            while let Some(ev) = stream.next().await {
                match ev {
                    Event::State(sig) => {
                        let a = sig.args()?;
                        if cli.json {
                            println!(
                                "{}",
                                serde_json::json!({"domain": a.name, "old": a.old, "new": a.new})
                            );
                        } else {
                            println!(
                                "{} {} -> {}",
                                a.name,
                                if a.old.is_empty() { "-" } else { &a.old },
                                a.new
                            );
                        }
                    }
                    Event::Limit(sig) => {
                        let a = sig.args()?;
                        if cli.json {
                            println!(
                                "{}",
                                serde_json::json!({"domain": a.domain, "limit_event": a.kind,
                                    "count": a.count, "action": a.action, "detail": a.detail})
                            );
                        } else {
                            println!(
                                "{} limit {} x{} ({}): {}",
                                a.domain, a.kind, a.count, a.action, a.detail
                            );
                        }
                    }
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
            Err(fail(6, "dmsd closed the connection"))
        }
        Cmd::Exec(args) => {
            let p = connect(&endpoint).await?;
            domain(&p, DomainCmd::Exec(args), cli.json).await
        }
        Cmd::RunOnce(a) => {
            let vars = parse_env(a.env)?;
            let p = connect(&endpoint).await?;
            use std::os::fd::AsFd;
            let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
            let fds = vec![i.as_fd().into(), o.as_fd().into(), e.as_fd().into()];
            let (_, _, code) = p
                .run_once(
                    &a.id.user, &a.id.vo, &a.id.fqan, &a.id.job, &a.command, &vars, &a.cwd,
                    &a.run_as, fds,
                )
                .await?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Cmd::Domain(cmd) => {
            let p = connect(&endpoint).await?;
            domain(&p, cmd, cli.json).await
        }
    }
}

async fn domain(p: &ManagerProxy<'_>, cmd: DomainCmd, json: bool) -> Result<u8, Failure> {
    let done = |what: &str, name: &str| {
        if json {
            println!("{}", serde_json::json!({"ok": true, "domain": name}));
        } else {
            println!("{what} {name}");
        }
    };
    match cmd {
        DomainCmd::Create(Identity {
            user,
            vo,
            fqan,
            job,
        }) => {
            let s = p.ensure_domain(&user, &vo, &fqan, &job).await?;
            if json {
                print_json(&s);
            } else {
                let d: Domain = decode(&s)?;
                print_domains(&[d]);
            }
        }
        DomainCmd::List => {
            let s = p.list_domains().await?;
            if json {
                print_json(&s);
            } else {
                let list: Vec<Domain> = decode(&s)?;
                print_domains(&list);
            }
        }
        DomainCmd::Show { name } => {
            let s = p.get_domain(&name).await?;
            if json {
                print_json(&s);
            } else {
                print_domain(&decode(&s)?);
            }
        }
        DomainCmd::Freeze { name } => {
            p.freeze_domain(&name).await?;
            done("frozen", &name);
        }
        DomainCmd::Thaw { name } => {
            p.thaw_domain(&name).await?;
            done("thawed", &name);
        }
        DomainCmd::Save { name } => {
            p.save_domain(&name).await?;
            done("saved", &name);
        }
        DomainCmd::Restore { name } => {
            p.restore_domain(&name).await?;
            done("restored", &name);
        }
        DomainCmd::Destroy { name } => {
            p.destroy_domain(&name).await?;
            done("destroyed", &name);
        }
        DomainCmd::Attach { name, pid } => {
            p.attach_pid(&name, pid).await?;
            done(&format!("attached pid {pid} to"), &name);
        }
        DomainCmd::JoinInfo { name } => {
            print_json(&p.join_info(&name).await?);
        }
        DomainCmd::Exec(ExecArgs {
            name,
            user,
            cwd,
            env,
            no_wait,
            command,
        }) => {
            let vars = parse_env(env)?;
            use std::os::fd::AsFd;
            let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
            // A detached command must not hold this terminal (or a caller's pipes) open.
            let fds = if no_wait {
                Vec::new()
            } else {
                vec![i.as_fd().into(), o.as_fd().into(), e.as_fd().into()]
            };
            let (pid, code) = p
                .run(&name, &command, &vars, &cwd, &user, fds, !no_wait)
                .await?;
            if no_wait {
                if json {
                    println!("{}", serde_json::json!({"pid": pid}));
                } else {
                    println!("{pid}");
                }
                return Ok(0);
            }
            return Ok(u8::try_from(code).unwrap_or(1));
        }
    }
    Ok(0)
}
