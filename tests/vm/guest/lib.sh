# Helpers for VM scenario scripts (sourced before the scenario runs).
#
# Results go to the dedicated result channel /dev/ttyS1 (QEMU's second
# serial port, written to its own file on the host), so they never
# interleave with kernel or systemd messages on the console (ttyS0).
#
#   result KEY VALUE...     one line: @@PCIPASS-RESULT KEY=VALUE (newlines -> spaces)
#   blob KEY                stdin, base64 between @@PCIPASS-BLOB-BEGIN/END KEY
#   capture KEY CMD...      run CMD; KEY = its stdout+stderr (blob), KEY.rc = exit code
#   next_action reboot      after the scenario, reboot instead of powering off
#                           (QEMU runs with -no-reboot, so it exits either way)
#   log MSG...              a line on the console, for humans reading the log

PCIPASS_RESULT_TTY=${PCIPASS_RESULT_TTY:-/dev/ttyS1}

_pcipass_emit() {
    printf '%s\n' "$*" >"$PCIPASS_RESULT_TTY"
}

result() {
    local key=$1
    shift
    local value="$*"
    _pcipass_emit "@@PCIPASS-RESULT ${key}=${value//$'\n'/ }"
}

blob() {
    local key=$1 data
    data=$(base64 -w 76)
    {
        printf '@@PCIPASS-BLOB-BEGIN %s\n' "$key"
        [ -n "$data" ] && printf '%s\n' "$data"
        printf '@@PCIPASS-BLOB-END %s\n' "$key"
    } >"$PCIPASS_RESULT_TTY"
}

capture() {
    local key=$1 out rc=0
    shift
    out=$("$@" 2>&1) || rc=$?
    printf '%s' "$out" | blob "$key"
    result "${key}.rc" "$rc"
    return 0
}

next_action() {
    mkdir -p /run/pcipass-test
    echo "$1" >/run/pcipass-test/next-action
}

log() {
    printf 'pcipass-test: %s\n' "$*" >/dev/console
}

# pci_inventory [PREFIX]: for every PCI device, report
#   PREFIX.<bdf>.id=vvvv:dddd  PREFIX.<bdf>.driver=<name|none>
#   PREFIX.<bdf>.group=<iommu group|none>  PREFIX.<bdf>.override=<driver_override|none>
# and PREFIX.iommu_groups=<count of /sys/kernel/iommu_groups entries>.
pci_inventory() {
    local prefix=${1:-pci} dev bdf drv grp ovr
    for dev in /sys/bus/pci/devices/*; do
        bdf=${dev##*/}
        drv=none grp=none ovr=none
        [ -e "$dev/driver" ] && drv=$(basename "$(readlink -f "$dev/driver")")
        [ -e "$dev/iommu_group" ] && grp=$(basename "$(readlink -f "$dev/iommu_group")")
        [ -r "$dev/driver_override" ] && ovr=$(cat "$dev/driver_override")
        [ "$ovr" = "(null)" ] && ovr=none
        result "$prefix.$bdf.id" "$(sed 's/^0x//' "$dev/vendor"):$(sed 's/^0x//' "$dev/device")"
        result "$prefix.$bdf.driver" "$drv"
        result "$prefix.$bdf.group" "$grp"
        result "$prefix.$bdf.override" "$ovr"
    done
    result "$prefix.iommu_groups" "$(find /sys/kernel/iommu_groups -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
}
