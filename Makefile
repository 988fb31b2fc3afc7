# The two entry points for a newcomer: `make demo` and `make test`.
CARGO ?= cargo
MVN ?= mvn -B -ntp
# The real CloudStack API client the HTTP API tests drive lives in a private
# virtual environment (Debian's own Python refuses system-wide pip installs).
VENV ?= $(CURDIR)/.venv
export NETBRIDGE_PYTHON := $(VENV)/bin/python3

.PHONY: deps demo test rust-test java-test lint bench

# Host tools the data plane and its tests use; installed (Debian) only when missing.
HOST_TOOLS = ip nft iptables dnsmasq haproxy radvd ping curl dig dhclient conntrack mariadbd mariadb-install-db mariadb-dump rsync
deps:
	@missing=""; for t in $(HOST_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing packages for:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    iproute2 nftables iptables dnsmasq-base haproxy radvd iputils-ping curl dnsutils isc-dhcp-client conntrack \
	    mariadb-server mariadb-client galera-4 rsync >/dev/null; \
	fi
	@test -e /usr/lib/galera/libgalera_smm.so || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends galera-4 >/dev/null; }
	@python3 -c 'import ensurepip' 2>/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; }
	@$(NETBRIDGE_PYTHON) -c 'import cs' 2>/dev/null || { python3 -m venv --clear $(VENV) && $(NETBRIDGE_PYTHON) -m pip install -q --disable-pip-version-check 'cs==5.2.0'; }

# As root, the demo runs a real network lifecycle against executors in namespaces
# (examples/testbed.rs); otherwise it shows the control plane only.
demo: deps
	$(CARGO) build --workspace --bins --lib --example testbed
	$(MVN) -f java/pom.xml -Dnetbridge.cargo.skip=true -DskipTests package
	$(MVN) -f java/pom.xml -Dnetbridge.cargo.skip=true exec:java -Dexec.mainClass=org.apache.cloudstack.netbridge.demo.Demo -Dexec.classpathScope=test

test: deps lint rust-test java-test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The suites run the workspace's binaries (netbridge, netbridge-executor,
# netbridge-entrypoint), which Cargo only builds for their own crate's tests.
rust-test:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast --lib --bins --tests

# The end-to-end suites (e2e/, root only) need the binaries and the testbed program.
java-test:
	$(CARGO) build --workspace --lib --bins --example testbed --example mariadb
	$(MVN) -f java/pom.xml -Dnetbridge.cargo.skip=true test

bench:
	$(CARGO) build --workspace --release --bins
	$(CARGO) bench --workspace
