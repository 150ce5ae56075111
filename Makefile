# make install [DESTDIR=...] [PREFIX=/usr/local] [PYTHON=/usr/bin/python3]
# Installs the package privately under $(PREFIX)/lib/pcipassd (it works with any python3 >= 3.9
# that has pyyaml and jsonschema, whatever its site-packages layout), a launcher in
# $(PREFIX)/sbin, the systemd units, the early hold (pcipassd-early, its initramfs-tools hook and
# init-top and init-bottom scripts, its dracut module, the udev rule), and the example config only
# if none exists yet. udev, initramfs-tools and dracut read only their own directories, whatever
# PREFIX is. Both initramfs stages are installed whichever builder the host has: each is inert
# without its builder, and a host that changes builders (Debian's dracut replaces
# initramfs-tools) has the stage for the new one.

PREFIX ?= /usr/local
PYTHON ?= /usr/bin/python3
SBINDIR ?= $(PREFIX)/sbin
LIBDIR ?= $(PREFIX)/lib/pcipassd
UNITDIR ?= $(PREFIX)/lib/systemd/system
DOCDIR ?= $(PREFIX)/share/doc/pcipassd
SYSCONFDIR ?= /etc
UDEVRULESDIR ?= /usr/lib/udev/rules.d
INITRAMFSDIR ?= /usr/share/initramfs-tools
DRACUTMODDIR ?= /usr/lib/dracut/modules.d
DRACUT_MODULE = 90pcipassd
CATALOGDIR ?= /usr/lib/systemd/catalog
MANDIR ?= $(PREFIX)/share/man
COMPLETIONDIR ?= $(PREFIX)/share/bash-completion/completions
BUILD_PYTHON ?= python3
SUBST = sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' -e 's|@LIBDIR@|$(LIBDIR)|g'

# Onto the live system (no DESTDIR), compile the journal catalog as the packages' triggers do,
# so that `journalctl -x` knows pcipassd's MESSAGE_IDs at once. A staged install (DESTDIR, the
# package builds) leaves that to the package manager.
UPDATE_CATALOG = if [ -z "$(DESTDIR)" ] && command -v journalctl >/dev/null 2>&1; then \
		journalctl --update-catalog; fi

SOURCES := $(wildcard pcipassd/*.py) pcipassd/schema.json pcipassd/node.schema.json pcipassd/py.typed
VERB_SOURCES := $(wildcard pcipassd/verbs/*.py)
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' pcipassd/__init__.py)

.PHONY: all install uninstall clean rpm test demo

# The man pages and the bash completion, generated from the argument parser and the schema.
all: build/doc/.stamp

build/doc/.stamp: tools/gendocs.py pcipassd/cli.py pcipassd/schema.json pcipassd/__init__.py README.md
	$(BUILD_PYTHON) tools/gendocs.py build/doc
	touch $@

install: build/doc/.stamp
	install -d $(DESTDIR)$(LIBDIR)/pcipassd/verbs $(DESTDIR)$(SBINDIR) $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(DOCDIR) $(DESTDIR)$(SYSCONFDIR)/pcipass.d
	install -m 0644 $(SOURCES) $(DESTDIR)$(LIBDIR)/pcipassd/
	install -m 0644 $(VERB_SOURCES) $(DESTDIR)$(LIBDIR)/pcipassd/verbs/
	printf '#!%s\nimport sys\nsys.path.insert(0, "%s")\nfrom pcipassd.cli import main\nraise SystemExit(main())\n' \
		'$(PYTHON)' '$(LIBDIR)' > $(DESTDIR)$(SBINDIR)/pcipassd
	chmod 0755 $(DESTDIR)$(SBINDIR)/pcipassd
	for unit in pcipassd.service pcipassd-early.service pcipassd-publish.service \
			pcipassd-publish.timer; do \
		$(SUBST) systemd/$$unit > $(DESTDIR)$(UNITDIR)/$$unit && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$unit || exit 1; \
	done
	install -m 0755 early/pcipassd-early $(DESTDIR)$(LIBDIR)/pcipassd-early
	install -d $(DESTDIR)$(UDEVRULESDIR) $(DESTDIR)$(INITRAMFSDIR)/hooks \
		$(DESTDIR)$(INITRAMFSDIR)/scripts/init-top $(DESTDIR)$(INITRAMFSDIR)/scripts/init-bottom
	$(SUBST) early/60-pcipassd.rules > $(DESTDIR)$(UDEVRULESDIR)/60-pcipassd.rules
	chmod 0644 $(DESTDIR)$(UDEVRULESDIR)/60-pcipassd.rules
	$(SUBST) early/initramfs-tools/hooks/pcipassd > $(DESTDIR)$(INITRAMFSDIR)/hooks/pcipassd
	chmod 0755 $(DESTDIR)$(INITRAMFSDIR)/hooks/pcipassd
	install -m 0755 early/initramfs-tools/scripts/init-top/pcipassd \
		$(DESTDIR)$(INITRAMFSDIR)/scripts/init-top/pcipassd
	install -m 0755 early/initramfs-tools/scripts/init-bottom/pcipassd \
		$(DESTDIR)$(INITRAMFSDIR)/scripts/init-bottom/pcipassd
	install -d $(DESTDIR)$(DRACUTMODDIR)/$(DRACUT_MODULE)
	$(SUBST) early/dracut/$(DRACUT_MODULE)/module-setup.sh \
		> $(DESTDIR)$(DRACUTMODDIR)/$(DRACUT_MODULE)/module-setup.sh
	chmod 0755 $(DESTDIR)$(DRACUTMODDIR)/$(DRACUT_MODULE)/module-setup.sh
	install -m 0755 early/dracut/$(DRACUT_MODULE)/pcipassd-hold.sh \
		early/dracut/$(DRACUT_MODULE)/pcipassd-release.sh $(DESTDIR)$(DRACUTMODDIR)/$(DRACUT_MODULE)/
	install -m 0644 early/dracut/$(DRACUT_MODULE)/pcipassd-initrd.service \
		$(DESTDIR)$(DRACUTMODDIR)/$(DRACUT_MODULE)/
	install -d $(DESTDIR)$(CATALOGDIR)
	install -m 0644 systemd/pcipassd.catalog $(DESTDIR)$(CATALOGDIR)/pcipassd.catalog
	install -d $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(COMPLETIONDIR)
	install -m 0644 build/doc/pcipassd.8 $(DESTDIR)$(MANDIR)/man8/pcipassd.8
	install -m 0644 build/doc/pcipass.yaml.5 $(DESTDIR)$(MANDIR)/man5/pcipass.yaml.5
	install -m 0644 build/doc/pcipassd.bash-completion $(DESTDIR)$(COMPLETIONDIR)/pcipassd
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -m 0644 etc/pcipass.yaml $(DESTDIR)$(DOCDIR)/pcipass.yaml.example
	test -e $(DESTDIR)$(SYSCONFDIR)/pcipass.yaml || \
		install -m 0644 etc/pcipass.yaml $(DESTDIR)$(SYSCONFDIR)/pcipass.yaml
	$(UPDATE_CATALOG)

uninstall:
	rm -rf $(DESTDIR)$(LIBDIR) $(DESTDIR)$(DOCDIR) $(DESTDIR)$(DRACUTMODDIR)/$(DRACUT_MODULE)
	rm -f $(DESTDIR)$(SBINDIR)/pcipassd $(DESTDIR)$(UNITDIR)/pcipassd.service \
		$(DESTDIR)$(UNITDIR)/pcipassd-early.service $(DESTDIR)$(UNITDIR)/pcipassd-publish.service \
		$(DESTDIR)$(UNITDIR)/pcipassd-publish.timer $(DESTDIR)$(UDEVRULESDIR)/60-pcipassd.rules \
		$(DESTDIR)$(INITRAMFSDIR)/hooks/pcipassd $(DESTDIR)$(INITRAMFSDIR)/scripts/init-top/pcipassd \
		$(DESTDIR)$(INITRAMFSDIR)/scripts/init-bottom/pcipassd $(DESTDIR)$(CATALOGDIR)/pcipassd.catalog $(DESTDIR)$(MANDIR)/man8/pcipassd.8 \
		$(DESTDIR)$(MANDIR)/man5/pcipass.yaml.5 $(DESTDIR)$(COMPLETIONDIR)/pcipassd
	$(UPDATE_CATALOG)

clean:
	rm -rf build

# The Debian package: dpkg-buildpackage -us -uc -b (see debian/). The RPM, from a tarball of
# HEAD, into build/rpm/RPMS; RPMFLAGS=--nodeps where Fedora's build dependencies cannot be
# installed (on Debian, say).
rpm:
	mkdir -p build/rpm/SOURCES
	git archive --format=tar.gz --prefix=pcipassd-$(VERSION)/ \
		-o build/rpm/SOURCES/pcipassd-$(VERSION).tar.gz HEAD
	rpmbuild -bb $(RPMFLAGS) --define "_topdir $(CURDIR)/build/rpm" pcipassd.spec

test:
	bash .ci/run

demo:
	python3 tests/vm/demo.py
