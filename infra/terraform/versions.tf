terraform {
  # 1.9+: variable validations may refer to other variables (ingest deadline vs timeout).
  required_version = ">= 1.9"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }

  # State must outlive a Cloud Build run. Partial configuration: the bucket and prefix are given at
  # init time (`terraform init -backend-config=bucket=... -backend-config=prefix=...`).
  backend "gcs" {}
}

provider "google" {
  project = var.project
  region  = var.region
}
