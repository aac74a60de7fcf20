#!/bin/sh
# One-shot (compose service minio-init): the MLflow and DVC buckets, and the productgen access key with
# read/write on those two buckets only (MinIO's root account stays for administration). Safe to run again.
set -eu
for pair in "MINIO_ROOT_PASSWORD=$MINIO_ROOT_PASSWORD" "S3_SECRET_KEY=$S3_SECRET_KEY"; do
    case "${pair#*=}" in  # the example env file's placeholders are public: never accept them
        *change-me*) echo "${pair%%=*} still holds the example placeholder from infra/.env.example; set a real secret in infra/.env" >&2; exit 2 ;;
    esac
    value="${pair#*=}"
    [ "${#value}" -ge 12 ] || { echo "${pair%%=*}: use 12 characters or more" >&2; exit 2; }
done
mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/$MLFLOW_BUCKET" "local/$DVC_BUCKET"
cat > /tmp/productgen-policy.json <<POLICY
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
   "Resource": ["arn:aws:s3:::$MLFLOW_BUCKET", "arn:aws:s3:::$DVC_BUCKET"]},
  {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                                 "s3:ListMultipartUploadParts"],
   "Resource": ["arn:aws:s3:::$MLFLOW_BUCKET/*", "arn:aws:s3:::$DVC_BUCKET/*"]}]}
POLICY
mc admin policy create local productgen-rw /tmp/productgen-policy.json
mc admin user add local "$S3_ACCESS_KEY" "$S3_SECRET_KEY"
mc admin policy attach local productgen-rw --user "$S3_ACCESS_KEY" 2>/dev/null || true  # already attached
echo "buckets $MLFLOW_BUCKET, $DVC_BUCKET and access key $S3_ACCESS_KEY ready"
