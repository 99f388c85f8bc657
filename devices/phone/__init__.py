"""The phone-shaped test device: a root file system of static Debian tools (no glibc, no Python, mksh as
/system/bin/sh) served by the project's adbd (:mod:`devices.phone.adbd`) as uid 2000. Phone-shaped, not Android."""
