#!/usr/bin/perl
# Perl's Net::POP3 (libnet) as a POP3 client: LIST, UIDL, RETR each message into OUT/N.eml
# (checking its size against LIST), DELE each, QUIT.
#
#     net_pop3.pl plain|stls|pop3s HOST PORT CAFILE USER PASSWORD_FILE OUT
use strict;
use warnings;
use Net::POP3;

my ($mode, $host, $port, $cafile, $user, $password_file, $out) = @ARGV;
open(my $pf, '<', $password_file) or die "cannot read $password_file: $!";
my $password = <$pf>;
chomp $password;
close $pf;

my %tls = (SSL_ca_file => $cafile, SSL_verifycn_name => $host);
my $pop = Net::POP3->new($host, Port => $port, Timeout => 30, Debug => 1,
    ($mode eq 'pop3s' ? (SSL => 1, %tls) : ()))
  or die "cannot connect to $host:$port: $@";
if ($mode eq 'stls') {
    $pop->starttls(%tls) or die "STLS failed: " . ($pop->message // $IO::Socket::SSL::SSL_ERROR);
}
my $count = $pop->login($user, $password);
defined $count or die "login failed: " . $pop->message;
my $list = $pop->list or die "LIST failed: " . $pop->message;
my $uidl = $pop->uidl or die "UIDL failed: " . $pop->message;
my @nums = sort { $a <=> $b } keys %$list;
die "login says $count messages, LIST " . scalar(@nums) unless $count == @nums;
mkdir $out;
for my $n (@nums) {
    my $lines = $pop->get($n) or die "RETR $n failed: " . $pop->message;
    open(my $fh, '>', "$out/$n.eml") or die "cannot write $out/$n.eml: $!";
    binmode $fh;
    print $fh join('', @$lines);
    close $fh or die "cannot write $out/$n.eml: $!";
    # Net::Cmd gives the lines with the stuffing removed, ending in "\n" (or "\r\n" over TLS).
    my $octets = 0;
    for my $line (@$lines) {
        (my $text = $line) =~ s/\r?\n\z//;
        $octets += length($text) + 2;
    }
    print STDERR "retr $n: LIST size $list->{$n}, $octets octets read, uid $uidl->{$n}\n";
    die "RETR $n gave $octets octets, LIST said $list->{$n}\n" unless $octets == $list->{$n};
}
for my $n (@nums) {
    $pop->delete($n) or die "DELE $n failed: " . $pop->message;
}
$pop->quit or die "QUIT failed: " . $pop->message;
