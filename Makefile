# The two entry points for a newcomer: `make demo` and `make test`.
CARGO ?= cargo
MVN ?= mvn -B -ntp

.PHONY: demo test rust-test java-test lint bench

# As root, the demo runs a real network lifecycle against executors in namespaces
# (examples/testbed.rs); otherwise it shows the control plane only.
demo:
	$(CARGO) build --bins --lib --example testbed
	$(MVN) -f java/pom.xml -Dnetbridge.cargo.skip=true -DskipTests package
	$(MVN) -f java/pom.xml -Dnetbridge.cargo.skip=true exec:java -Dexec.mainClass=org.apache.cloudstack.netbridge.demo.Demo -Dexec.classpathScope=test

test: lint rust-test java-test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

rust-test:
	$(CARGO) test --no-fail-fast --lib --bins --tests

# The end-to-end suites (e2e/, root only) need the binaries and the testbed program.
java-test:
	$(CARGO) build --lib --bins --example testbed
	$(MVN) -f java/pom.xml -Dnetbridge.cargo.skip=true test

bench:
	$(CARGO) bench
