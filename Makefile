# The two entry points for a newcomer: `make demo` and `make test`.
CARGO ?= cargo
MVN ?= mvn -B -ntp

.PHONY: demo test rust-test java-test lint bench

demo:
	$(CARGO) build --bins --lib
	$(MVN) -f java/pom.xml -Dnetbridge.cargo.skip=true -DskipTests package
	$(MVN) -f java/pom.xml -Dnetbridge.cargo.skip=true exec:java -Dexec.mainClass=org.apache.cloudstack.netbridge.demo.Demo -Dexec.classpathScope=test

test: lint rust-test java-test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

rust-test:
	$(CARGO) test --lib --bins --tests

java-test:
	$(CARGO) build --lib
	$(MVN) -f java/pom.xml -Dnetbridge.cargo.skip=true test

bench:
	$(CARGO) bench
