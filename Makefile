# The two entry points for a newcomer: `make demo` and `make test`.
CARGO ?= cargo
MVN ?= mvn -B -ntp
# The real CloudStack API client the HTTP API tests drive lives in a private
# virtual environment (Debian's own Python refuses system-wide pip installs).
VENV ?= $(CURDIR)/.venv
export NETBRIDGE_PYTHON := $(VENV)/bin/python3

.PHONY: deps demo test rust-test java-test lint bench deb

# Host tools the data plane and its tests use; installed (Debian) only when missing.
HOST_TOOLS = ip nft iptables dnsmasq haproxy radvd ping curl dig dhclient conntrack \
	dpkg-deb dpkg-shlibdeps lintian systemd-analyze \
	mariadbd mariadb-install-db mariadb-dump rsync
deps:
	@missing=""; for t in $(HOST_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing packages for:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    iproute2 nftables iptables dnsmasq-base haproxy radvd iputils-ping curl dnsutils isc-dhcp-client conntrack \
	    dpkg-dev lintian systemd mariadb-server mariadb-client galera-4 rsync >/dev/null; \
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

# Debian packages netbridge-executor and netbridge-management, staged under
# $(DEB_OUT)/<package>/ and built with dpkg-deb. DEB_PROFILE=dev packages the
# debug build (tests); DEB_VERSION defaults to Cargo.toml's version.
DEB_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
DEB_PROFILE ?= release
DEB_OUT ?= target/deb
DEB_BIN = target/$(if $(filter dev,$(DEB_PROFILE)),debug,$(DEB_PROFILE))
DEB_DATE = $(shell git log -1 --format=%cD 2>/dev/null || date -R)
DEB_MAINTAINER ?= netbridge developers <dev@cloudstack.apache.org>
DEB_JNI = usr/lib/x86_64-linux-gnu/jni
DEB_JAR = java/target/netbridge-$(shell sed -n 's:.*<version>\(.*\)</version>.*:\1:p' java/pom.xml | head -n 1).jar
EXEC_STAGE = $(DEB_OUT)/netbridge-executor
MGMT_STAGE = $(DEB_OUT)/netbridge-management

# Depends of the binaries given, as dpkg-shlibdeps computes them.
deb_shlibs = $$(mkdir -p $(DEB_OUT)/shlibs/debian && printf 'Source: netbridge\n\nPackage: netbridge\nArchitecture: any\n' > $(DEB_OUT)/shlibs/debian/control && \
	cd $(DEB_OUT)/shlibs && dpkg-shlibdeps -O $(foreach b,$(1),-e$(abspath $(b))) 2>/dev/null | sed -n 's/^shlibs:Depends=//p')

# Common files of a package: control (version and Depends filled in),
# maintainer scripts, copyright, changelog, md5sums.
define deb_meta
	install -d -m 0755 $(1)/DEBIAN $(1)/usr/share/doc/$(2)
	sed -e 's/@VERSION@/$(DEB_VERSION)/' -e 's/@MAINTAINER@/$(DEB_MAINTAINER)/' -e "s/@SHLIBS@/$(call deb_shlibs,$(3))/" packaging/deb/$(2)/control > $(1)/DEBIAN/control
	for f in conffiles postinst prerm postrm; do \
	  if [ -f packaging/deb/$(2)/$$f ]; then install -m $$( [ $$f = conffiles ] && echo 0644 || echo 0755) packaging/deb/$(2)/$$f $(1)/DEBIAN/$$f; fi; \
	done
	install -m 0644 packaging/deb/copyright $(1)/usr/share/doc/$(2)/copyright
	install -m 0644 docs/operations.md $(1)/usr/share/doc/$(2)/operations.md
	sed -e 's/@VERSION@/$(DEB_VERSION)/' -e 's/@PACKAGE@/$(2)/' -e 's/@DATE@/$(DEB_DATE)/' -e 's/@MAINTAINER@/$(DEB_MAINTAINER)/' packaging/deb/changelog | gzip -9n > $(1)/usr/share/doc/$(2)/changelog.gz
	install -D -m 0644 packaging/deb/$(2)/lintian-overrides $(1)/usr/share/lintian/overrides/$(2)
	cd $(1) && find usr lib -type f -exec md5sum {} + 2>/dev/null | sort -k 2 > DEBIAN/md5sums
	dpkg-deb --root-owner-group -Zxz --build $(1) $(DEB_OUT)/$(2)_$(DEB_VERSION)_amd64.deb
endef

deb:
	$(CARGO) build $(if $(filter dev,$(DEB_PROFILE)),,--profile $(DEB_PROFILE)) --workspace --lib --bins
	rm -rf $(EXEC_STAGE) $(MGMT_STAGE)
	install -D -m 0755 $(DEB_BIN)/netbridge-executor $(EXEC_STAGE)/usr/bin/netbridge-executor
	install -D -m 0644 packaging/netbridge-executor.service $(EXEC_STAGE)/lib/systemd/system/netbridge-executor.service
	install -D -m 0644 packaging/executor.toml $(EXEC_STAGE)/etc/netbridge/executor.toml
	install -D -m 0644 packaging/grafana-dashboard.json $(EXEC_STAGE)/usr/share/netbridge/grafana-dashboard.json
	install -D -m 0755 $(DEB_BIN)/netbridge $(MGMT_STAGE)/usr/bin/netbridge
	install -D -m 0644 packaging/netbridge.toml $(MGMT_STAGE)/etc/netbridge/netbridge.toml
	install -D -m 0755 $(DEB_BIN)/netbridge-entrypoint $(MGMT_STAGE)/usr/bin/netbridge-entrypoint
	install -D -m 0644 $(DEB_BIN)/libnetbridge.so $(MGMT_STAGE)/$(DEB_JNI)/libnetbridge.so
	strip --strip-unneeded --remove-section=.comment --remove-section=.note \
	  $(EXEC_STAGE)/usr/bin/netbridge-executor $(MGMT_STAGE)/usr/bin/netbridge \
	  $(MGMT_STAGE)/usr/bin/netbridge-entrypoint $(MGMT_STAGE)/$(DEB_JNI)/libnetbridge.so
	# The jar carries the stripped library too (NativeLoader's fallback).
	$(MVN) -q -f java/pom.xml -Dnetbridge.cargo.skip=true -Dnetbridge.native.dir=$(abspath $(MGMT_STAGE)/$(DEB_JNI)) -DskipTests package
	install -D -m 0644 $(DEB_JAR) $(MGMT_STAGE)/usr/share/netbridge/netbridge.jar
	install -d -m 0755 $(MGMT_STAGE)/usr/share/cloudstack-management/lib
	ln -s ../../netbridge/netbridge.jar $(MGMT_STAGE)/usr/share/cloudstack-management/lib/netbridge.jar
	$(call deb_meta,$(EXEC_STAGE),netbridge-executor,$(EXEC_STAGE)/usr/bin/netbridge-executor)
	$(call deb_meta,$(MGMT_STAGE),netbridge-management,$(MGMT_STAGE)/usr/bin/netbridge $(MGMT_STAGE)/usr/bin/netbridge-entrypoint $(MGMT_STAGE)/$(DEB_JNI)/libnetbridge.so)
