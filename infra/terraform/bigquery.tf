# schemas/tables.json is the one description of every table. The ops tables are created here from
# it (the space datasets and their tables are created at run time by the functions, one dataset
# per space), so Terraform and the code cannot drift apart.
locals {
  table_specs = {
    for name, spec in jsondecode(file("${path.module}/../../schemas/tables.json")) : name => spec
    if !startswith(name, "_")
  }

  ops_tables = {
    for name, spec in local.table_specs : name => {
      description     = spec.description
      partition_field = spec.partition_field
      clustering      = spec.clustering
      schema = jsonencode([
        for column in spec.columns : {
          name        = column.name
          type        = column.type
          mode        = "NULLABLE"
          description = column.description
        }
      ])
    }
    if spec.dataset == "ops"
  }
}

resource "google_bigquery_dataset" "ops" {
  project                    = var.project
  dataset_id                 = var.ops_dataset
  location                   = var.bigquery_location
  description                = "personas-warehouse operations: refused messages and users sync history."
  delete_contents_on_destroy = false

  # Customer-managed encryption when kms_key_name is set (Google-managed otherwise). Tables created
  # in this dataset later, by the functions too, inherit the key.
  dynamic "default_encryption_configuration" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      kms_key_name = default_encryption_configuration.value
    }
  }

  depends_on = [google_project_service.apis, google_kms_crypto_key_iam_member.cmek]
}

resource "google_bigquery_table" "ops" {
  for_each = local.ops_tables

  project             = var.project
  dataset_id          = google_bigquery_dataset.ops.dataset_id
  table_id            = each.key
  description         = each.value.description
  schema              = each.value.schema
  clustering          = length(each.value.clustering) > 0 ? each.value.clustering : null
  deletion_protection = true

  dynamic "encryption_configuration" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      kms_key_name = encryption_configuration.value
    }
  }

  # Same layout as the code's ensure_table: day partitions on the partition field.
  dynamic "time_partitioning" {
    for_each = each.value.partition_field == null ? [] : [each.value.partition_field]
    content {
      type  = "DAY"
      field = time_partitioning.value
    }
  }
}
