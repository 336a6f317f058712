//! pam_dms.so: puts PAM sessions into DMS domains (built by the PAM/NSS issue).
