# The two commands of the README. Each installs what it needs first (scripts/setup.sh is
# idempotent and fast when everything is there).
.PHONY: run test build deb

run:
	./scripts/setup.sh
	./scripts/retry.sh cargo build --release --locked --bin tessera
	./target/release/tessera serve

test:
	./scripts/setup.sh --test
	./scripts/test.sh

build:
	./scripts/setup.sh
	./scripts/retry.sh cargo build --release --locked --workspace

# A Debian package (binary, systemd unit, default config, `tessera` user, /var/lib/tessera):
# target/debian/tessera_<version>_<arch>.deb
deb:
	./scripts/setup.sh
	./scripts/deb.sh
