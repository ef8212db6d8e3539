// The program of p12-testenv's workload image: a Java TLS server and client that
// use the PKCS#12 files the operator writes, the way a Tomcat, Kafka or Spring
// workload does (KeyStore "PKCS12", KeyManagerFactory/TrustManagerFactory "PKIX").
//
//   serve   [--keystore /etc/tls/keystore.p12] [--password-file /etc/tls-password/password]
//           [--port 8443] [--bind 0.0.0.0] [--alias name]
//           [--client-auth /etc/tls/truststore.p12 [truststore-password-file]] [--reload true]
//   connect --host h [--port 8443] [--truststore /etc/tls/truststore.p12]
//           [--truststore-password-file /etc/tls-password/password]
//           [--keystore k [--password-file f]] [--expect-fingerprint hex] [--timeout-ms 10000]
//
// The defaults fit a pod that mounts the issued Secret at /etc/tls and the
// password Secret (spec.keystore.passwordSecretRef) at /etc/tls-password; for a
// generated password pass --password-file /etc/tls/keystore-password. The
// operator encrypts the truststore with the keystore's password, so one password
// file serves both. Fingerprints are the SHA-256 of the certificate's DER in
// lowercase hex, as the operator writes them in the request's status.
//
// Exit status: 0 success, 1 failure (printed on stdout), 2 usage error.

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.KeyStore;
import java.security.MessageDigest;
import java.security.cert.X509Certificate;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Set;

public final class Workload {
    static final String DEFAULT_KEYSTORE = "/etc/tls/keystore.p12";
    static final String DEFAULT_TRUSTSTORE = "/etc/tls/truststore.p12";
    static final String DEFAULT_PASSWORD_FILE = "/etc/tls-password/password";

    public static void main(String[] args) {
        if (args.length == 0) {
            usage("no mode given");
        }
        List<String> rest = List.of(args).subList(1, args.length);
        int status;
        try {
            status = switch (args[0]) {
                case "serve" -> Serve.run(new Options(rest, Serve.OPTIONS));
                case "connect" -> Connect.run(new Options(rest, Connect.OPTIONS));
                default -> {
                    usage("unknown mode " + args[0]);
                    yield 2;
                }
            };
        } catch (UsageError e) {
            usage(e.getMessage());
            status = 2;
        } catch (Exception e) {
            System.out.println("error: " + e);
            status = 1;
        }
        System.exit(status);
    }

    private static void usage(String why) {
        System.out.println("usage error: " + why);
        System.out.println("usage: workload serve [--keystore k] [--password-file f] [--port p] [--bind addr]"
                + " [--alias a] [--client-auth truststore [truststore-password-file]]");
        System.out.println("       workload connect --host h [--port p] [--truststore t] [--truststore-password-file f]"
                + " [--keystore k [--password-file f]] [--expect-fingerprint hex] [--timeout-ms ms]");
        System.exit(2);
    }

    /** The password in a mounted Secret key, without the newline `echo` or an editor may leave. */
    static char[] readPassword(Path file) throws IOException {
        String text = Files.readString(file, StandardCharsets.UTF_8);
        int end = text.length();
        while (end > 0 && (text.charAt(end - 1) == '\n' || text.charAt(end - 1) == '\r')) {
            end--;
        }
        return text.substring(0, end).toCharArray();
    }

    static KeyStore loadPkcs12(Path file, char[] password) throws IOException, GeneralSecurityException {
        KeyStore ks = KeyStore.getInstance("PKCS12");
        try (InputStream in = Files.newInputStream(file)) {
            ks.load(in, password);
        } catch (IOException e) {
            // Java reports a wrong password as an IOException; name the file.
            throw new IOException("cannot open " + file + ": " + e.getMessage(), e);
        }
        return ks;
    }

    static String sha256(X509Certificate cert) throws GeneralSecurityException {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(cert.getEncoded()));
    }

    static String subject(X509Certificate cert) {
        return cert.getSubjectX500Principal().getName();
    }

    /** A bad command line: printed with the usage, exit status 2. */
    static final class UsageError extends RuntimeException {
        private static final long serialVersionUID = 1L;

        UsageError(String message) {
            super(message);
        }
    }

    /** `--name value` options; `--client-auth` may take a second value. */
    static final class Options {
        private final Map<String, List<String>> values = new HashMap<>();

        Options(List<String> args, Set<String> allowed) {
            for (int i = 0; i < args.size(); i++) {
                String name = args.get(i);
                if (!allowed.contains(name)) {
                    throw new UsageError("unknown option " + name);
                }
                if (i + 1 >= args.size()) {
                    throw new UsageError(name + " needs a value");
                }
                List<String> v = new ArrayList<>();
                v.add(args.get(++i));
                if (name.equals("--client-auth") && i + 1 < args.size() && !args.get(i + 1).startsWith("--")) {
                    v.add(args.get(++i));
                }
                values.put(name, v);
            }
        }

        List<String> list(String name) {
            return values.getOrDefault(name, Collections.emptyList());
        }

        String string(String name, String fallback) {
            List<String> v = list(name);
            return v.isEmpty() ? fallback : v.get(0);
        }

        Path path(String name, String fallback) {
            String v = string(name, fallback);
            return v == null ? null : Path.of(v);
        }

        String required(String name) {
            String v = string(name, null);
            if (v == null) {
                throw new UsageError(name + " is required");
            }
            return v;
        }

        int integer(String name, int fallback) {
            String v = string(name, null);
            if (v == null) {
                return fallback;
            }
            try {
                return Integer.parseInt(v);
            } catch (NumberFormatException e) {
                throw new UsageError(name + " must be a number, not " + v);
            }
        }
    }
}
