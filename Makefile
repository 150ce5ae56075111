# make install [DESTDIR=...] [PREFIX=/usr/local] [PYTHON=/usr/bin/python3]
# Installs the package privately under $(PREFIX)/lib/pcipassd (it works with any python3 >= 3.11
# that has pyyaml and jsonschema, whatever its site-packages layout), a launcher in
# $(PREFIX)/sbin, the systemd unit, and the example config only if none exists yet.

PREFIX ?= /usr/local
PYTHON ?= /usr/bin/python3
SBINDIR ?= $(PREFIX)/sbin
LIBDIR ?= $(PREFIX)/lib/pcipassd
UNITDIR ?= $(PREFIX)/lib/systemd/system
DOCDIR ?= $(PREFIX)/share/doc/pcipassd
SYSCONFDIR ?= /etc

SOURCES := $(wildcard pcipassd/*.py) pcipassd/schema.json pcipassd/py.typed

.PHONY: all install uninstall test demo

all:
	@echo "nothing to build; try: make install, make test, make demo"

install:
	install -d $(DESTDIR)$(LIBDIR)/pcipassd $(DESTDIR)$(SBINDIR) $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(DOCDIR) $(DESTDIR)$(SYSCONFDIR)/pcipass.d
	install -m 0644 $(SOURCES) $(DESTDIR)$(LIBDIR)/pcipassd/
	printf '#!%s\nimport sys\nsys.path.insert(0, "%s")\nfrom pcipassd.cli import main\nraise SystemExit(main())\n' \
		'$(PYTHON)' '$(LIBDIR)' > $(DESTDIR)$(SBINDIR)/pcipassd
	chmod 0755 $(DESTDIR)$(SBINDIR)/pcipassd
	sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' systemd/pcipassd.service \
		> $(DESTDIR)$(UNITDIR)/pcipassd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/pcipassd.service
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -m 0644 etc/pcipass.yaml $(DESTDIR)$(DOCDIR)/pcipass.yaml.example
	test -e $(DESTDIR)$(SYSCONFDIR)/pcipass.yaml || \
		install -m 0644 etc/pcipass.yaml $(DESTDIR)$(SYSCONFDIR)/pcipass.yaml

uninstall:
	rm -rf $(DESTDIR)$(LIBDIR) $(DESTDIR)$(DOCDIR)
	rm -f $(DESTDIR)$(SBINDIR)/pcipassd $(DESTDIR)$(UNITDIR)/pcipassd.service

test:
	bash .ci/run

demo:
	python3 tests/vm/demo.py
