//! The batch job a session belongs to.

/// The job id from slurmstepd's process title, `slurmstepd: [JOBID.STEP]` (as read from
/// `/proc/self/cmdline`): the digits after `[`. `None` for any other process.
pub fn job_from_cmdline(cmdline: &[u8]) -> Option<String> {
    let rest = cmdline.strip_prefix(b"slurmstepd: [")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    // Only ASCII digits: valid UTF-8.
    String::from_utf8(rest[..digits].to_vec()).ok()
}

/// The job id of the calling process: `SLURM_JOB_ID` from the PAM environment when set,
/// else slurmstepd's process title.
pub fn job_id(pam_env_job: Option<String>) -> Option<String> {
    if let Some(j) = pam_env_job.map(|j| j.trim().to_string()) {
        if !j.is_empty() {
            return Some(j);
        }
    }
    let cmdline = std::fs::read("/proc/self/cmdline").ok()?;
    job_from_cmdline(&cmdline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurmstepd_titles() {
        assert_eq!(
            job_from_cmdline(b"slurmstepd: [1234.0]\0\0\0"),
            Some("1234".into())
        );
        assert_eq!(
            job_from_cmdline(b"slurmstepd: [77.extern]"),
            Some("77".into())
        );
        assert_eq!(
            job_from_cmdline(b"slurmstepd: [9.batch]\0"),
            Some("9".into())
        );
        assert_eq!(job_from_cmdline(b"slurmstepd: [5]"), Some("5".into()));
        assert_eq!(job_from_cmdline(b"slurmstepd: [.0]"), None);
        assert_eq!(job_from_cmdline(b"slurmstepd: []"), None);
        assert_eq!(job_from_cmdline(b"slurmstepd: [x1]"), None);
        assert_eq!(job_from_cmdline(b"slurmstepd:[1.0]"), None);
        assert_eq!(job_from_cmdline(b"/usr/sbin/sshd\0-D\0"), None);
        assert_eq!(job_from_cmdline(b"sshd: atlas001 [priv]"), None);
        assert_eq!(job_from_cmdline(b""), None);
    }

    #[test]
    fn the_pam_environment_wins() {
        assert_eq!(job_id(Some("42".into())), Some("42".into()));
        assert_eq!(job_id(Some(" 42\n".into())), Some("42".into()));
        // The test binary is no slurmstepd.
        assert_eq!(job_id(Some(String::new())), None);
        assert_eq!(job_id(None), None);
    }
}
