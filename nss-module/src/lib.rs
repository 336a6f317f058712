//! libnss_dms.so.2: resolves DMS-mapped accounts (built by the PAM/NSS issue).
