"""What lives on the device's disk: the YAML configuration, enrolled voice profiles and enrollment."""
