-- The CloudStack 4.23 tables netbridge reads and writes, with the column
-- names, types and widths of CloudStack 4.23's schema (written for the
-- tests from the public schema facts; a real deployment has CloudStack's own
-- tables, which netbridge never creates or alters). Only the columns these
-- tables need here are kept for data_center and cluster.

CREATE TABLE data_center (
  id bigint unsigned NOT NULL AUTO_INCREMENT,
  uuid varchar(40),
  name varchar(255),
  removed datetime,
  PRIMARY KEY (id),
  CONSTRAINT uc_data_center__uuid UNIQUE (uuid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8;

CREATE TABLE physical_network (
  id bigint unsigned NOT NULL AUTO_INCREMENT,
  uuid varchar(40),
  name varchar(255) NOT NULL,
  data_center_id bigint unsigned NOT NULL,
  vnet varchar(255),
  speed varchar(32),
  domain_id bigint unsigned,
  broadcast_domain_range varchar(32) NOT NULL DEFAULT 'POD',
  state varchar(32) NOT NULL DEFAULT 'Disabled',
  created datetime,
  removed datetime,
  PRIMARY KEY (id),
  CONSTRAINT fk_physical_network__data_center_id FOREIGN KEY (data_center_id) REFERENCES data_center(id) ON DELETE CASCADE,
  CONSTRAINT uc_physical_networks__uuid UNIQUE (uuid),
  INDEX i_physical_network__removed (removed)
) ENGINE=InnoDB DEFAULT CHARSET=utf8;

CREATE TABLE cluster (
  id bigint unsigned NOT NULL AUTO_INCREMENT,
  name varchar(255),
  uuid varchar(40),
  guid varchar(255),
  pod_id bigint unsigned NOT NULL DEFAULT 0,
  data_center_id bigint unsigned NOT NULL,
  hypervisor_type varchar(32),
  cluster_type varchar(64) DEFAULT 'CloudManaged',
  allocation_state varchar(32) NOT NULL DEFAULT 'Enabled',
  managed_state varchar(32) NOT NULL DEFAULT 'Managed',
  removed datetime,
  PRIMARY KEY (id),
  CONSTRAINT uc_cluster__uuid UNIQUE (uuid),
  INDEX i_cluster__removed (removed)
) ENGINE=InnoDB DEFAULT CHARSET=utf8;

CREATE TABLE physical_network_service_providers (
  id bigint unsigned NOT NULL AUTO_INCREMENT,
  uuid varchar(40),
  physical_network_id bigint unsigned NOT NULL,
  provider_name varchar(255) NOT NULL,
  state varchar(32) NOT NULL DEFAULT 'Disabled',
  destination_physical_network_id bigint unsigned,
  vpn_service_provided tinyint(1) unsigned NOT NULL DEFAULT 0,
  dhcp_service_provided tinyint(1) unsigned NOT NULL DEFAULT 0,
  dns_service_provided tinyint(1) unsigned NOT NULL DEFAULT 0,
  gateway_service_provided tinyint(1) unsigned NOT NULL DEFAULT 0,
  firewall_service_provided tinyint(1) unsigned NOT NULL DEFAULT 0,
  source_nat_service_provided tinyint(1) unsigned NOT NULL DEFAULT 0,
  load_balance_service_provided tinyint(1) unsigned NOT NULL DEFAULT 0,
  static_nat_service_provided tinyint(1) unsigned NOT NULL DEFAULT 0,
  port_forwarding_service_provided tinyint(1) unsigned NOT NULL DEFAULT 0,
  user_data_service_provided tinyint(1) unsigned NOT NULL DEFAULT 0,
  security_group_service_provided tinyint(1) unsigned NOT NULL DEFAULT 0,
  networkacl_service_provided tinyint(1) unsigned NOT NULL DEFAULT 0,
  custom_action_service_provided tinyint(1) unsigned NOT NULL DEFAULT 0,
  removed datetime,
  PRIMARY KEY (id),
  CONSTRAINT fk_pnetwork_service_providers__physical_network_id FOREIGN KEY (physical_network_id) REFERENCES physical_network(id) ON DELETE CASCADE,
  CONSTRAINT uc_service_providers__uuid UNIQUE (uuid),
  UNIQUE KEY (physical_network_id, provider_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8;

CREATE TABLE extension (
  id bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  uuid varchar(40) NOT NULL UNIQUE,
  name varchar(255) NOT NULL,
  description varchar(4096),
  type varchar(255) NOT NULL,
  relative_path varchar(2048) NOT NULL,
  path_ready tinyint(1) DEFAULT '0',
  is_user_defined tinyint(1) DEFAULT '0',
  state char(32) NOT NULL,
  created datetime NOT NULL,
  removed datetime DEFAULT NULL,
  PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8;

CREATE TABLE extension_details (
  id bigint unsigned UNIQUE NOT NULL AUTO_INCREMENT,
  extension_id bigint unsigned NOT NULL,
  name varchar(255) NOT NULL,
  value varchar(4096) NOT NULL,
  display tinyint(1) NOT NULL DEFAULT '1',
  PRIMARY KEY (id),
  CONSTRAINT fk_extension_details__extension_id FOREIGN KEY (extension_id) REFERENCES extension (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8;

CREATE TABLE extension_resource_map (
  id bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  extension_id bigint(20) unsigned NOT NULL,
  resource_id bigint(20) unsigned NOT NULL,
  resource_type char(255) NOT NULL,
  created datetime NOT NULL,
  removed datetime DEFAULT NULL,
  PRIMARY KEY (id),
  CONSTRAINT fk_extension_resource_map__extension_id FOREIGN KEY (extension_id) REFERENCES extension(id) ON DELETE CASCADE,
  INDEX idx_extension_resource (resource_id, resource_type)
) ENGINE=InnoDB DEFAULT CHARSET=utf8;

CREATE TABLE extension_resource_map_details (
  id bigint unsigned UNIQUE NOT NULL AUTO_INCREMENT,
  extension_resource_map_id bigint unsigned NOT NULL,
  name varchar(255) NOT NULL,
  value varchar(4096) NOT NULL,
  display tinyint(1) NOT NULL DEFAULT '1',
  PRIMARY KEY (id),
  CONSTRAINT fk_extension_resource_map_details__map_id FOREIGN KEY (extension_resource_map_id) REFERENCES extension_resource_map (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8;

INSERT INTO data_center (uuid, name) VALUES ('3c2b9a1e-0d4f-4b6a-8c7e-1f2a3b4c5d6e', 'zone1');
