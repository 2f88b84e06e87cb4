"""payswitch: a payment switch simulator and load-test harness."""
