#!/usr/bin/perl
# A bench instance that speaks sd_notify: READY=1, then WATCHDOG=1 every second, forever.
# Perl (part of every Debian/Ubuntu base system) keeps 1000 of these at a few MiB each,
# where 1000 Python interpreters would need gigabytes.
use strict;
use warnings;
use Socket;
my $address = $ENV{NOTIFY_SOCKET} or die "no NOTIFY_SOCKET\n";
$address =~ s/^@/\0/;
socket(my $sock, PF_UNIX, SOCK_DGRAM, 0) or die "socket: $!\n";
my $to = pack_sockaddr_un($address);
$SIG{TERM} = sub { exit 0 };
send($sock, "READY=1", 0, $to);
while (1) {
    send($sock, "WATCHDOG=1", MSG_DONTWAIT, $to);  # a full queue skips a beat, as the toolkit does
    select(undef, undef, undef, 1.0);
}
